package data

import (
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/dmc-project/dmc/data/tokenizer"
)

// byteTokenizer is a tiny exact tokenizer for unit tests: one token per byte (id = byte+3),
// BOS 1, EOS 2. Decode(Encode(s)) == s for any string.
type byteTokenizer struct{}

func (byteTokenizer) Encode(text string, addBOS, addEOS bool) []int {
	ids := make([]int, 0, len(text)+2)
	if addBOS {
		ids = append(ids, 1)
	}
	for i := 0; i < len(text); i++ {
		ids = append(ids, int(text[i])+3)
	}
	if addEOS {
		ids = append(ids, 2)
	}
	return ids
}

func (byteTokenizer) Decode(ids []int) string {
	b := make([]byte, 0, len(ids))
	for _, id := range ids {
		if id >= 3 && id < 259 {
			b = append(b, byte(id-3))
		}
	}
	if !utf8.Valid(b) {
		return string([]rune(string(b)))
	}
	return string(b)
}

func (byteTokenizer) VocabSize() int { return 259 }
func (byteTokenizer) BOS() int       { return 1 }
func (byteTokenizer) EOS() int       { return 2 }

const assets = "../../shared/assets"

// asset returns the path of a shared test asset, skipping the test when it is absent.
func asset(t testing.TB, rel string) string {
	t.Helper()
	p := filepath.Join(assets, rel)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("test asset %s not found (the shared assets folder is absent on this machine): %v", p, err)
	}
	return p
}

func loadTok512(t testing.TB) Tokenizer {
	t.Helper()
	tok, err := tokenizer.Load(asset(t, "tinyllamas-stories260K/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func writeFile(t testing.TB, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// readAllDocs streams every document of path back as ints.
func readAllDocs(t testing.TB, path string, opts OpenOptions) [][]int {
	t.Helper()
	ds, err := OpenWith(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]int
	for ids, err := range ds.Documents() {
		if err != nil {
			t.Fatal(err)
		}
		doc := make([]int, len(ids))
		for i, v := range ids {
			doc[i] = int(v)
		}
		docs = append(docs, doc)
	}
	return docs
}
