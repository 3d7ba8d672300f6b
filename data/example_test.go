package data_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/data"
)

// wordTokenizer is a toy tokenizer for the example: one id per letter a-z (2..27), BOS 1.
type wordTokenizer struct{}

func (wordTokenizer) Encode(text string, addBOS, addEOS bool) []int {
	var ids []int
	if addBOS {
		ids = append(ids, 1)
	}
	for _, r := range strings.ToLower(text) {
		if r >= 'a' && r <= 'z' {
			ids = append(ids, int(r-'a')+2)
		}
	}
	return ids
}

func (wordTokenizer) Decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		if id >= 2 && id < 28 {
			b.WriteByte(byte('a' + id - 2))
		}
	}
	return b.String()
}

func (wordTokenizer) VocabSize() int { return 28 }
func (wordTokenizer) BOS() int       { return 1 }
func (wordTokenizer) EOS() int       { return 0 }

func Example() {
	dir, _ := os.MkdirTemp("", "dmc-data-example")
	defer os.RemoveAll(dir)
	in := filepath.Join(dir, "stories.txt")
	os.WriteFile(in, []byte("abc<|endoftext|>defg<|endoftext|>hij"), 0o644)

	// Prepare: tokenise into Arrow shards (no held-out split here).
	m, err := data.Prepare(data.PrepareOptions{Inputs: []string{in}, Out: filepath.Join(dir, "out"), Tokenizer: wordTokenizer{}})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("train docs:", m.Splits[data.SplitTrain].Docs, "tokens:", m.Splits[data.SplitTrain].Tokens)

	// Stream it back and pack windows of 4+1 tokens.
	ds, err := data.Open(filepath.Join(dir, "out"))
	if err != nil {
		fmt.Println(err)
		return
	}
	p, err := data.NewPacker(ds, data.PackerOptions{SeqLen: 4, Epochs: 1})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	for w, err := range p.Windows() {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(w.Inputs(), "->", w.Targets())
	}
	// Output:
	// train docs: 3 tokens: 13
	// [1 2 3 4] -> [2 3 4 1]
	// [1 5 6 7] -> [5 6 7 8]
	// [8 1 9 10] -> [1 9 10 11]
}
