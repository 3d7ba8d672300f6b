package tokenizer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFindByContent: a tokenizer of any name next to the model is found by loading it; the
// model file itself never is; several candidates or none are errors that say what to do.
func TestFindByContent(t *testing.T) {
	needAsset(t, tok512Path)
	needAsset(t, llamaModelPath)
	model := filepath.Join(filepath.Dir(tok512Path), "stories260K.bin")
	needAsset(t, model)
	link := func(dir, name, target string) string {
		p := filepath.Join(dir, name)
		abs, err := filepath.Abs(target)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(abs, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	junk := func(dir, name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		setup   func(dir string) (arg string)
		want    string // base name; "" means an error
		wantErr []string
	}{
		{"tok105.model beside model5000.bin", func(dir string) string {
			link(dir, "tok105.model", llamaModelPath)
			return link(dir, "model5000.bin", model)
		}, "tok105.model", nil},
		{"the folder itself", func(dir string) string {
			link(dir, "tok105.model", llamaModelPath)
			link(dir, "model5000.bin", model)
			return dir
		}, "tok105.model", nil},
		{"llama2.c tokenizer of another name", func(dir string) string {
			link(dir, "vocab512.bin", tok512Path)
			junk(dir, "notes.txt", "hello")
			return link(dir, "ckpt.bin", model)
		}, "vocab512.bin", nil},
		{"conventional name preferred", func(dir string) string {
			link(dir, "tokenizer.model", llamaModelPath)
			link(dir, "other.model", llamaModelPath)
			return link(dir, "m.bin", model)
		}, "tokenizer.model", nil},
		{"several by content", func(dir string) string {
			link(dir, "tok105.model", llamaModelPath)
			link(dir, "vocab512.bin", tok512Path)
			return link(dir, "model5000.bin", model)
		}, "", []string{"several tokenizers", "tok105.model", "vocab512.bin", "--tokenizer"}},
		{"never the model file", func(dir string) string {
			return link(dir, "vocab.bin", tok512Path) // the "model" is a tokenizer-like file
		}, "", []string{"no tokenizer in"}},
		{"junk is not a tokenizer", func(dir string) string {
			junk(dir, "weights.model", "not a tokenizer")
			return link(dir, "model5000.bin", model)
		}, "", []string{"no tokenizer in", "not tokenizers: weights.model", "--tokenizer PATH"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			arg := tc.setup(dir)
			got, err := Find(arg)
			if tc.want != "" {
				if err != nil || got != filepath.Join(dir, tc.want) {
					t.Fatalf("Find = %q, %v; want %s", got, err, tc.want)
				}
				if _, err := Load(got); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Find = %q, want an error", got)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
