package bpe

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"unicode/utf8"
)

// Piece is one vocabulary entry.
type Piece struct {
	Text  string
	Score float32
}

// Train learns a vocabulary of vocabSize pieces from text read from r. Documents may be
// separated by sep (removed before counting); pass "" for none.
func Train(r io.Reader, vocabSize int, sep string) ([]Piece, error) {
	const reserved = 3 + 256
	words := map[string]int{}
	chars := map[rune]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		line := sc.Text()
		if sep != "" {
			line = strings.ReplaceAll(line, sep, "")
		}
		for _, w := range strings.Fields(line) {
			words[" "+w]++
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("bpe: read corpus: %w", err)
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("bpe: the corpus has no words")
	}
	type word struct {
		syms  []string
		count int
	}
	ws := make([]word, 0, len(words))
	keys := make([]string, 0, len(words))
	for w := range words {
		keys = append(keys, w)
	}
	sort.Strings(keys) // deterministic tie-breaking
	for _, w := range keys {
		var syms []string
		for _, c := range w {
			chars[c] += words[w]
			syms = append(syms, string(c))
		}
		ws = append(ws, word{syms, words[w]})
	}
	charList := make([]rune, 0, len(chars))
	for c := range chars {
		charList = append(charList, c)
	}
	sort.Slice(charList, func(i, j int) bool {
		if chars[charList[i]] != chars[charList[j]] {
			return chars[charList[i]] > chars[charList[j]]
		}
		return charList[i] < charList[j]
	})
	if vocabSize < reserved+len(charList) {
		return nil, fmt.Errorf("bpe: vocab size %d is too small: %d reserved ids + %d characters in the corpus", vocabSize, reserved, len(charList))
	}
	pieces := []Piece{{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, Piece{fmt.Sprintf("<0x%02X>", b), 0})
	}
	seen := map[string]bool{}
	for _, c := range charList {
		pieces = append(pieces, Piece{string(c), -1e6})
		seen[string(c)] = true
	}
	for rank := 0; len(pieces) < vocabSize; rank++ {
		pairs := map[[2]string]int{}
		for _, w := range ws {
			for i := 0; i+1 < len(w.syms); i++ {
				pairs[[2]string{w.syms[i], w.syms[i+1]}] += w.count
			}
		}
		var best [2]string
		bestN := 0
		for p, n := range pairs {
			if seen[p[0]+p[1]] {
				continue
			}
			if n > bestN || (n == bestN && p[0]+"\x00"+p[1] < best[0]+"\x00"+best[1]) {
				best, bestN = p, n
			}
		}
		if bestN < 2 {
			break // nothing left worth merging
		}
		merged := best[0] + best[1]
		seen[merged] = true
		pieces = append(pieces, Piece{merged, -float32(rank)})
		for wi := range ws {
			s := ws[wi].syms
			out := s[:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, merged)
					i++
				} else {
					out = append(out, s[i])
				}
			}
			ws[wi].syms = out
		}
	}
	return pieces, nil
}

// WriteLlama2C writes pieces in the llama2.c tokenizer.bin format.
func WriteLlama2C(w io.Writer, pieces []Piece) error {
	maxLen := 0
	for _, p := range pieces {
		if !utf8.ValidString(p.Text) && !strings.HasPrefix(p.Text, "<0x") {
			return fmt.Errorf("bpe: piece %q is not valid UTF-8", p.Text)
		}
		maxLen = max(maxLen, len(p.Text))
	}
	bw := bufio.NewWriter(w)
	put := func(v any) { _ = binary.Write(bw, binary.LittleEndian, v) }
	put(int32(maxLen))
	for _, p := range pieces {
		if math.IsNaN(float64(p.Score)) {
			return fmt.Errorf("bpe: piece %q has a NaN score", p.Text)
		}
		put(p.Score)
		put(int32(len(p.Text)))
		_, _ = bw.WriteString(p.Text)
	}
	return bw.Flush()
}
