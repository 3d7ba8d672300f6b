package retrofit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/internal/dmctest"
)

// An export's tokenizer files: a llama2.c tokenizer.bin becomes tokenizer.model (encoding the
// same) with tokenizer_config.json naming LlamaTokenizer; a .model is shipped as it is.
func TestWriteHFTokenizer(t *testing.T) {
	src := dmctest.AssetPath("tinyllamas-stories260K/tok512.bin")
	if _, err := os.Stat(src); err != nil {
		t.Skipf("asset %s: %v", src, err)
	}
	dir := t.TempDir()
	files, err := WriteHFTokenizer(dir, src, 512)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("files %v", files)
	}
	orig, _ := tokenizer.Load(src)
	conv, err := tokenizer.Load(filepath.Join(dir, "tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	text := "Once upon a time, Lily saw a big red ball. She said: \"Can I play?\" 42 naïve"
	if a, b := orig.Encode(text, true, false), conv.Encode(text, true, false); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("converted tokenizer encodes %v, the original %v", b, a)
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	for _, want := range []string{`"tokenizer_class": "LlamaTokenizer"`, `"bos_token": "<s>"`, `"add_bos_token": true`, `"model_max_length": 512`} {
		if !strings.Contains(string(cfg), want) {
			t.Errorf("tokenizer_config.json lacks %s:\n%s", want, cfg)
		}
	}
	// A SentencePiece source is copied byte for byte.
	dir2 := t.TempDir()
	if _, err := WriteHFTokenizer(dir2, filepath.Join(dir, "tokenizer.model"), 512); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "tokenizer.model"))
	b, _ := os.ReadFile(filepath.Join(dir2, "tokenizer.model"))
	if !bytes.Equal(a, b) {
		t.Fatal("a SentencePiece tokenizer was rewritten")
	}
}
