package cli

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

const assets = "../../../../shared/assets"

func needAssets(t *testing.T, sub string) string {
	t.Helper()
	p := filepath.Join(assets, sub)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("test asset %s not present (it lives in ../shared/assets next to the repository)", p)
	}
	return p
}

// run executes the CLI in-process and returns stdout, stderr and the exit status.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("output differs from %s:\n got: %q\nwant: %q", path, got, want)
	}
}

// The documented greedy continuation of stories260K, token for token (../shared/assets/README.md).
func TestGenerateStories260KGolden(t *testing.T) {
	dir := needAssets(t, "tinyllamas-stories260K")
	out, stderr, code := run(t, "generate", "--model", filepath.Join(dir, "stories260K.bin"),
		"--tokenizer", filepath.Join(dir, "tok512.bin"), "--temperature", "0", "--max-tokens", "60")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	golden(t, "stories260K_greedy.golden", out)
	if !strings.Contains(stderr, "generated 60 tokens") {
		t.Errorf("stats line missing: %q", stderr)
	}
}

func TestGenerateFindsTokenizerNextToModel(t *testing.T) {
	dir := needAssets(t, "tinyllamas-stories260K")
	out, stderr, code := run(t, "generate", "--model", filepath.Join(dir, "stories260K.bin"), "--temperature", "0", "--max-tokens", "8", "--stats=false")
	if code != 0 || !strings.HasPrefix(out, "Once upon a time") {
		t.Fatalf("exit %d, out %q, err %q", code, out, stderr)
	}
}

func TestSeededSamplingIsReproducible(t *testing.T) {
	dir := needAssets(t, "tinyllamas-stories260K")
	args := []string{"generate", "--model", filepath.Join(dir, "stories260K.bin"), "--temperature", "1", "--seed", "42", "--max-tokens", "30", "--stats=false"}
	a, _, _ := run(t, args...)
	b, _, _ := run(t, args...)
	if a != b || a == "" {
		t.Fatalf("same seed gave %q and %q", a, b)
	}
}

func TestCLIErrors(t *testing.T) {
	dir := needAssets(t, "tinyllamas-stories260K")
	tmp := t.TempDir()
	trunc := filepath.Join(tmp, "trunc.bin")
	full, _ := os.ReadFile(filepath.Join(dir, "stories260K.bin"))
	_ = os.WriteFile(trunc, full[:len(full)/2], 0o644)
	model := filepath.Join(dir, "stories260K.bin")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing model file", []string{"generate", "--model", filepath.Join(tmp, "nope.bin")}, "no such file"},
		{"truncated checkpoint", []string{"generate", "--model", trunc, "--tokenizer", filepath.Join(dir, "tok512.bin")}, "truncated"},
		{"tokenizer of another vocabulary", []string{"generate", "--model", model, "--tokenizer", filepath.Join(assets, "llama2-tokenizer/tokenizer.model")}, "expects 512"},
		{"bad max tokens", []string{"generate", "--model", model, "--max-tokens", "0"}, "--max-tokens must be positive"},
		{"negative temperature", []string{"generate", "--model", model, "--temperature", "-1"}, "temperature"},
		{"unknown device", []string{"generate", "--model", model, "--device", "tpu"}, "unknown --device"},
		{"eval on an unknown device", []string{"eval", "--model", model, "--data", filepath.Join(assets, "tinystories-valid/tinystories_valid_head.txt"), "--device", "tpu"}, "unknown --device"},
		{"unknown preset", []string{"inspect", "--model", "llama9-1t"}, "not a preset"},
		{"missing flag", []string{"generate"}, "required flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "panic") {
				t.Fatalf("exit %d, stderr %q; want an error mentioning %q", code, stderr, tc.want)
			}
		})
	}
}

func TestInspect(t *testing.T) {
	out, stderr, code := run(t, "inspect", "--model", "llama2-70b")
	if code != 0 {
		t.Fatal(stderr)
	}
	for _, want := range []string{"64 / 8 (grouped-query", "68.98B", "320.00 KiB bf16"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	dir := needAssets(t, "tinyllamas-stories260K")
	out, _, code = run(t, "inspect", "--model", filepath.Join(dir, "stories260K.bin"), "--json")
	if code != 0 || !strings.Contains(out, `"params": 260032`) || !strings.Contains(out, `"rope_layout": "interleaved"`) {
		t.Fatalf("inspect --json: %s", out)
	}
}
