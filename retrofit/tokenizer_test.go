package retrofit

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"

	"github.com/dmc-project/dmc/data/synth"
)

// A tokenizer trained from an xz-compressed corpus, or from the folder holding it, equals the
// one trained from the plain text; a JSON lines input is refused.
func TestTrainTokenizerFilesReadsCompressedCorpora(t *testing.T) {
	dir := t.TempDir()
	var text bytes.Buffer
	if err := synth.Write(&text, 100_000, 3); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain", "corpus.txt")
	os.MkdirAll(filepath.Dir(plain), 0o755)
	os.WriteFile(plain, text.Bytes(), 0o644)
	var zb bytes.Buffer
	zw, err := xz.NewWriter(&zb)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(text.Bytes())
	zw.Close()
	packed := filepath.Join(dir, "packed", "corpus.txt.xz")
	os.MkdirAll(filepath.Dir(packed), 0o755)
	os.WriteFile(packed, zb.Bytes(), 0o644)
	train := func(in, out string) []byte {
		t.Helper()
		if _, err := TrainTokenizerFiles(TokenizerTrainOptions{Inputs: []string{in}, Out: out, Vocab: 400, Separator: synth.Separator}); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(out)
		return b
	}
	want := train(plain, filepath.Join(dir, "a.model"))
	if got := train(packed, filepath.Join(dir, "b.model")); !bytes.Equal(got, want) {
		t.Error("the tokenizer of the .xz corpus differs from the plain one's")
	}
	if got := train(filepath.Dir(packed), filepath.Join(dir, "c.model")); !bytes.Equal(got, want) {
		t.Error("the tokenizer of the corpus folder differs from the plain file's")
	}
	jl := filepath.Join(dir, "x.jsonl")
	os.WriteFile(jl, []byte(`{"text": "a b c"}`+"\n"), 0o644)
	if _, err := TrainTokenizerFiles(TokenizerTrainOptions{Inputs: []string{jl}, Out: filepath.Join(dir, "d.model"), Vocab: 400}); err == nil || !strings.Contains(err.Error(), "not plain text") {
		t.Errorf("a jsonl input: %v", err)
	}
}
