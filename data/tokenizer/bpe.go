package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// merger is an exact, O(n log n) implementation of greedy BPE: repeatedly merge the
// adjacent pair whose concatenation is in the vocabulary with the highest score, the
// leftmost pair winning ties. This is the loop of llama2.c run.c encode and of
// SentencePiece's bpe_model.cc, done with a linked list of symbols and a max-heap of
// candidate pairs instead of a rescan per merge (which is quadratic on long texts).
//
// Symbols are substrings of the input, so a merged symbol is looked up without copying.
type merger struct {
	pieces map[string]int32 // mergeable pieces: surface text (spaces as ' ') -> id
	scores []float32
	// minScore: a pair merges only if its score is strictly greater (llama2.c starts its
	// search at -1e10, so pieces scored at or below it never merge).
	minScore float32
	// byteID[b] is the byte-fallback token of byte b, or -1.
	byteID [256]int32
	unk    int32 // token for an unknown symbol when a byte has no fallback, or -1
	// symbols chooses the initial segmentation of text (appends to dst).
	symbols func(m *merger, text string, dst []symbol) []symbol
	// userDefined are atomic pieces matched before single characters (SentencePiece).
	userDefined []string
	// unused pieces may be formed by merges but are not emitted: they are split back
	// into the two symbols that formed them (SentencePiece's resegmentation).
	unused map[int32]bool
	// mergeUnk emits one unknown token for a run of unknown symbols (SentencePiece).
	mergeUnk bool
}

type symbol struct {
	start, end int32 // text[start:end]
	prev, next int32 // linked list over live symbols; -1 at the ends
	id         int32 // token of a symbol that cannot merge (byte fallback), else -1
	noMerge    bool
	dead       bool
}

type pairCand struct {
	score       float32
	left, right int32
	mid, end    int32 // left.end and right.end when pushed; a change means stale
}

// better orders the heap: higher score first, then the leftmost pair.
func better(a, b pairCand) bool {
	return a.score > b.score || (a.score == b.score && a.left < b.left)
}

type pairHeap []pairCand

func (h *pairHeap) push(c pairCand) {
	*h = append(*h, c)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !better(s[i], s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *pairHeap) pop() pairCand {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		best := l
		if r := l + 1; r < n && better(s[r], s[l]) {
			best = r
		}
		if !better(s[best], s[i]) {
			break
		}
		s[i], s[best] = s[best], s[i]
		i = best
	}
	*h = s
	return top
}

// encode appends the tokens of text to dst.
func (m *merger) encode(text string, dst []int) []int {
	if len(text) == 0 {
		return dst
	}
	syms := m.symbols(m, text, make([]symbol, 0, len(text)))
	n := len(syms)
	for i := range syms {
		syms[i].prev = int32(i - 1)
		syms[i].next = int32(i + 1)
	}
	syms[n-1].next = -1

	h := make(pairHeap, 0, n)
	suggest := func(l, r int32) {
		if l < 0 || r < 0 || syms[l].noMerge || syms[r].noMerge {
			return
		}
		id, ok := m.pieces[text[syms[l].start:syms[r].end]]
		if !ok {
			return
		}
		score := m.scores[id]
		if !(score > m.minScore) { // also rejects NaN
			return
		}
		h.push(pairCand{score: score, left: l, right: r, mid: syms[l].end, end: syms[r].end})
	}
	for i := 1; i < n; i++ {
		suggest(int32(i-1), int32(i))
	}
	// split records, for merged pieces that are unused, the length of their left part.
	var split map[string]int
	for len(h) > 0 {
		c := h.pop()
		l, r := &syms[c.left], &syms[c.right]
		if l.dead || r.dead || l.end != c.mid || r.end != c.end {
			continue // one side merged elsewhere since this pair was pushed
		}
		if m.unused != nil {
			if id := m.pieces[text[l.start:r.end]]; m.unused[id] {
				if split == nil {
					split = make(map[string]int)
				}
				split[text[l.start:r.end]] = int(l.end - l.start)
			}
		}
		l.end = r.end
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.left
		}
		r.dead = true
		suggest(l.prev, c.left)
		suggest(c.left, l.next)
	}
	prevUnk := false
	for i := int32(0); i >= 0; i = syms[i].next {
		s := syms[i]
		if s.id >= 0 {
			dst = append(dst, int(s.id))
			prevUnk = false
			continue
		}
		dst, prevUnk = m.emit(text[s.start:s.end], split, prevUnk, dst)
	}
	return dst
}

// emit appends the tokens of one final symbol: its piece, the resegmented halves of an
// unused piece, or the fallback for an unknown symbol (bytes, else <unk>).
func (m *merger) emit(piece string, split map[string]int, prevUnk bool, dst []int) ([]int, bool) {
	if id, ok := m.pieces[piece]; ok {
		if n, isSplit := split[piece]; isSplit && m.unused[id] {
			dst, prevUnk = m.emit(piece[:n], split, prevUnk, dst)
			return m.emit(piece[n:], split, prevUnk, dst)
		}
		return append(dst, int(id)), false
	}
	for i := 0; i < len(piece); i++ {
		if m.byteID[piece[i]] < 0 {
			if prevUnk && m.mergeUnk {
				return dst, true
			}
			return append(dst, int(m.unk)), true
		}
	}
	for i := 0; i < len(piece); i++ {
		dst = append(dst, int(m.byteID[piece[i]]))
	}
	return dst, false
}

// llama2cSymbols is the first loop of llama2.c encode: group the bytes of each UTF-8
// codepoint (a lead byte plus up to 3 continuation bytes), look the group up, and fall
// back to one token per byte (id = byte + 3) when it is not in the vocabulary. Fallback
// tokens never merge: llama2.c concatenates their "<0xNN>" text, which is no piece.
func llama2cSymbols(m *merger, text string, dst []symbol) []symbol {
	start := 0
	for i := 0; i < len(text); i++ {
		if i+1 < len(text) && text[i+1]&0xC0 == 0x80 && i+1-start < 4 {
			continue
		}
		if _, ok := m.pieces[text[start:i+1]]; ok {
			dst = append(dst, symbol{start: int32(start), end: int32(i + 1), id: -1})
		} else {
			for j := start; j <= i; j++ {
				dst = append(dst, symbol{start: int32(j), end: int32(j + 1), id: m.byteID[text[j]], noMerge: true})
			}
		}
		start = i + 1
	}
	return dst
}

// sentencePieceSymbols is the initial segmentation of SentencePiece BPE: a user-defined
// piece (longest match, never merged) or else one character (an invalid UTF-8 byte is a
// character of its own). Unknown characters stay mergeable strings and fall back to bytes
// or <unk> only at the end, as in SentencePiece.
func sentencePieceSymbols(m *merger, text string, dst []symbol) []symbol {
	for i := 0; i < len(text); {
		if n := m.matchUserDefined(text[i:]); n > 0 {
			dst = append(dst, symbol{start: int32(i), end: int32(i + n), id: -1, noMerge: true})
			i += n
			continue
		}
		_, n := utf8.DecodeRuneInString(text[i:])
		dst = append(dst, symbol{start: int32(i), end: int32(i + n), id: -1})
		i += n
	}
	return dst
}

func (m *merger) matchUserDefined(s string) int {
	best := 0
	for _, u := range m.userDefined {
		if len(u) > best && strings.HasPrefix(s, u) {
			best = len(u)
		}
	}
	return best
}
