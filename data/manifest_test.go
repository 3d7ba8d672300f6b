package data

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// TestManifestGolden pins the manifest.json layout (a format other tools read) and the
// byte split: with 0.5, the stories starting in the first half of the file are train.
func TestManifestGolden(t *testing.T) {
	out := t.TempDir()
	if _, err := Prepare(PrepareOptions{Inputs: []string{"testdata/four_stories.txt"}, Out: out,
		Tokenizer: byteTokenizer{}, SplitByBytes: 0.5, AddEOS: true}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "four_stories.manifest.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("manifest differs from %s (run with -update if the change is intended):\n%s", golden, got)
	}
}
