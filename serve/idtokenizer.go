package serve

import (
	"strconv"
	"strings"
)

// IDTokenizer stands in for a tokenizer when a model has none (random-weight benchmarks):
// prompts must be token ids, and token i reads " <i>". It has no BOS or EOS, so generation
// runs to max_tokens.
type IDTokenizer struct{ Vocab int }

// Encode parses space-separated token ids ("12 7 99"); other words are skipped.
func (t IDTokenizer) Encode(text string, _, _ bool) []int {
	var ids []int
	for _, f := range strings.Fields(text) {
		if n, err := strconv.Atoi(strings.Trim(f, "<>")); err == nil && n >= 0 && n < t.Vocab {
			ids = append(ids, n)
		}
	}
	return ids
}

// Decode joins the pieces of ids.
func (t IDTokenizer) Decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(t.Piece(-1, id))
	}
	return b.String()
}

// Piece is " <id>".
func (IDTokenizer) Piece(_, id int) string { return " <" + strconv.Itoa(id) + ">" }

// VocabSize is Vocab.
func (t IDTokenizer) VocabSize() int { return t.Vocab }

// BOS is -1 (none).
func (IDTokenizer) BOS() int { return -1 }

// EOS is -1 (none).
func (IDTokenizer) EOS() int { return -1 }
