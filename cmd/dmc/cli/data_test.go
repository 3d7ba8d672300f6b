package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDataPrepareAndInspect(t *testing.T) {
	tok := filepath.Join(needAssets(t, "tinyllamas-stories260K"), "tok512.bin")
	in := filepath.Join(needAssets(t, "tinystories"), "cs336_tinystories_sample.txt")
	out := filepath.Join(t.TempDir(), "prepared")
	stdout, stderr, code := run(t, "data", "prepare", "--tokenizer", tok, "--out", out, "--split-by-bytes", "0.85", in)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"prepared ", "train ", "heldout ", "first 0.85 of the bytes", "manifest: " + filepath.Join(out, "manifest.json")} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	// Preparing into the same directory again needs --force.
	if _, stderr, code := run(t, "data", "prepare", "--tokenizer", tok, "--out", out, in); code == 0 || !strings.Contains(stderr, "--force") {
		t.Errorf("second prepare: exit %d, %q", code, stderr)
	}
	stdout, stderr, code = run(t, "data", "inspect", out, "--tokenizer", tok)
	if code != 0 {
		t.Fatalf("inspect exit %d: %s", code, stderr)
	}
	for _, want := range []string{"layout         prepared (split train)", "token column   input_ids (token ids)", `first row`, `Once upon a time there was a little boy named Ben.`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestDataInspectHuggingFace(t *testing.T) {
	dir := needAssets(t, "hf-arrow-examples")
	stdout, stderr, code := run(t, "data", "inspect", filepath.Join(dir, "elyza_tasks_100_slice10"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"hf-datasetdict (split test)", "rows           10 (the metadata declares 100)", "--text-column", "仕事の熱意"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestDataErrors(t *testing.T) {
	tok := filepath.Join(needAssets(t, "tinyllamas-stories260K"), "tok512.bin")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	jl := write("a.jsonl", `{"body": "hi"}`+"\n")
	csv := write("a.csv", "text\nhi\n")
	blank := write("blank.txt", "\n<|endoftext|>\n")
	txt := write("a.txt", "hello")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing input", []string{"--out", dir + "/o1", dir + "/nope.txt"}, "does not exist"},
		{"no inputs", []string{"--out", dir + "/o2"}, "no inputs"},
		{"unknown extension", []string{"--out", dir + "/o3", csv}, "--format txt|jsonl|parquet"},
		{"unknown format", []string{"--out", dir + "/o4", "--format", "csv", txt}, "unknown input format"},
		{"missing text field", []string{"--out", dir + "/o5", jl}, `no field "text"; its fields are body; pass the text field with --text-field`},
		{"empty output", []string{"--out", dir + "/o6", blank}, "no documents"},
		{"both split flags", []string{"--out", dir + "/o7", "--heldout-frac", "0.1", "--split-by-bytes", "0.5", txt}, "not both"},
		{"no out", []string{txt}, "--out DIR"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, append([]string{"data", "prepare", "--tokenizer", tok}, tc.args...)...)
			if code == 0 || !strings.Contains(stderr, tc.want) || !strings.HasPrefix(stderr, "dmc: ") {
				t.Fatalf("exit %d, stderr %q; want an error containing %q", code, stderr, tc.want)
			}
		})
	}
	if _, stderr, code := run(t, "data", "inspect", filepath.Join(dir, "nothing")); code == 0 || !strings.Contains(stderr, "does not exist") {
		t.Fatalf("inspect of a missing path: exit %d, %q", code, stderr)
	}
}
