package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// merger is an exact implementation of greedy BPE: repeatedly merge the adjacent pair
// whose concatenation is in the vocabulary with the highest score, the leftmost pair
// winning ties. This is the loop of llama2.c run.c encode and of SentencePiece's
// bpe_model.cc, run word by word when the vocabulary allows (see encode), with a pair
// rescan for short spans and a max-heap of candidate pairs for long ones (a rescan per
// merge is quadratic on long texts).
//
// Symbols are substrings of the input held in a linked list, so a merged symbol is just
// a wider substring.
type merger struct {
	pieces map[string]int32 // mergeable pieces: surface text (spaces as ' ') -> id
	scores []float32
	// minScore: a pair merges only if its score is strictly greater (llama2.c starts its
	// search at -1e10, so pieces scored at or below it never merge).
	minScore float32
	// byteID[b] is the byte-fallback token of byte b, or -1.
	byteID [256]int32
	unk    int32 // token for an unknown symbol when a byte has no fallback, or -1
	// symbols appends the initial segmentation of text[from:] to dst.
	symbols func(m *merger, text string, from int, dst []symbol) []symbol
	// userDefined are atomic pieces matched before single characters (SentencePiece).
	userDefined []string
	// unused pieces may be formed by merges but are not emitted: they are split back
	// into the two symbols that formed them (SentencePiece's resegmentation).
	unused map[int32]bool
	// mergeUnk emits one unknown token for a run of unknown symbols (SentencePiece).
	mergeUnk bool
	// splitAtSpaces: no piece has a space right after a non-space byte, so no merge can
	// cross the start of a space that follows a non-space, and the text is encoded word by
	// word (see encode). Set by finishInit.
	splitAtSpaces bool
	// pairs maps two piece ids (left<<32 | right) to the piece their texts join into.
	pairs map[uint64]int32
	// single[b] is the piece of the one-byte string b, or -1.
	single [256]int32
}

// lookup finds the piece of a symbol's text.
func (m *merger) lookup(s string) (int32, bool) {
	if len(s) == 1 {
		id := m.single[s[0]]
		return id, id >= 0
	}
	id, ok := m.pieces[s]
	return id, ok
}

// finishInit derives the lookup tables and splitAtSpaces from the pieces.
func (m *merger) finishInit() {
	m.splitAtSpaces = true
	m.pairs = make(map[uint64]int32, 4*len(m.pieces))
	for b := range m.single {
		m.single[b] = -1
	}
	for p, id := range m.pieces {
		if len(p) == 1 {
			m.single[p[0]] = id
		}
		for k := 1; k < len(p); k++ {
			if p[k] == ' ' && p[k-1] != ' ' {
				m.splitAtSpaces = false
			}
			// Every merge joins two pieces into a piece, so this table has them all.
			l, okL := m.pieces[p[:k]]
			r, okR := m.pieces[p[k:]]
			if okL && okR {
				m.pairs[uint64(uint32(l))<<32|uint64(uint32(r))] = id
			}
		}
	}
}

type symbol struct {
	start, end int32 // text[start:end]
	prev, next int32 // linked list over live symbols; -1 at the ends
	// piece is the id of the symbol's text as a piece, -1 if it is none (an unknown
	// character); for a byte-fallback symbol it is the byte token.
	piece   int32
	noMerge bool
	dead    bool
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
//
// Every symbol a merge creates is a piece, so when no piece spans position p, no merge
// crosses p, and the greedy order inside each side is unaffected by the other: encoding
// the two sides separately gives the same tokens. With splitAtSpaces that holds before
// each space that follows a non-space, so the text is encoded word by word, which keeps
// the heap tiny and in cache (a single heap over megabytes is several times slower).
func (m *merger) encode(text string, dst []int) []int {
	var st encodeState
	start := 0
	if m.splitAtSpaces {
		// Long texts repeat words: remember each word's tokens (a word's tokens depend
		// only on its text, except around <unk> runs, which are not remembered).
		var cache map[string][]int
		if len(text) >= wordCacheMinText {
			cache = make(map[string][]int)
		}
		for p := 1; p <= len(text); p++ {
			if p < len(text) && (text[p] != ' ' || text[p-1] == ' ') {
				continue
			}
			word := text[start:p]
			if ids, ok := cache[word]; ok {
				dst = append(dst, ids...)
				st.prevUnk = false
			} else {
				before := len(dst)
				st.sawUnk = false
				dst = m.encodeSpan(text, start, p, &st, dst)
				if cache != nil && !st.sawUnk && len(cache) < wordCacheMaxEntries {
					cache[word] = append([]int(nil), dst[before:]...)
				}
			}
			start = p
		}
		return dst
	}
	return m.encodeSpan(text, start, len(text), &st, dst)
}

// The word cache is used for texts of at least wordCacheMinText bytes and holds at most
// wordCacheMaxEntries words.
const (
	wordCacheMinText    = 4 << 10
	wordCacheMaxEntries = 1 << 18
)

// encodeState carries buffers between spans, and whether the last token was an <unk>
// from a run of unknown symbols (which may continue into the next span).
type encodeState struct {
	syms    []symbol
	heap    pairHeap
	prevUnk bool
	sawUnk  bool // an <unk> was emitted since the caller cleared it
}

// encodeSpan merges text[start:end] (symbols keep offsets into text).
func (m *merger) encodeSpan(text string, start, end int, st *encodeState, dst []int) []int {
	if start >= end {
		return dst
	}
	syms := m.symbols(m, text[:end], start, st.syms[:0])
	st.syms = syms
	n := len(syms)
	for i := range syms {
		syms[i].prev = int32(i - 1)
		syms[i].next = int32(i + 1)
	}
	syms[n-1].next = -1

	var split map[string]int
	if n <= linearScanMax {
		split = m.mergeLinear(text, syms)
	} else {
		split = m.mergeHeap(text, syms, st)
	}
	for i := int32(0); i >= 0; i = syms[i].next {
		s := syms[i]
		if s.piece >= 0 && (split == nil || !m.unused[s.piece]) {
			dst = append(dst, int(s.piece))
			st.prevUnk = false
			continue
		}
		dst, st.prevUnk = m.emit(text[s.start:s.end], split, st.prevUnk, dst)
		st.sawUnk = st.sawUnk || st.prevUnk
	}
	return dst
}

// linearScanMax: spans with at most this many symbols (almost every word) are merged by
// rescanning the pairs, as run.c does; it beats the heap's bookkeeping on short spans.
const linearScanMax = 32

// pairScore is the score of merging syms[l] with its successor, ok=false if not a piece.
func (m *merger) pairScore(text string, syms []symbol, l int32) (float32, bool) {
	r := syms[l].next
	if r < 0 || syms[l].noMerge || syms[r].noMerge {
		return 0, false
	}
	id, ok := m.pairID(text, &syms[l], &syms[r])
	if !ok || !(m.scores[id] > m.minScore) { // also rejects NaN
		return 0, false
	}
	return m.scores[id], true
}

// pairID is the piece formed by two adjacent symbols: from the pair table when both are
// pieces (the common case, no string hashing), else by looking up their joined text.
func (m *merger) pairID(text string, l, r *symbol) (int32, bool) {
	if l.piece >= 0 && r.piece >= 0 {
		id, ok := m.pairs[uint64(uint32(l.piece))<<32|uint64(uint32(r.piece))]
		return id, ok
	}
	id, ok := m.pieces[text[l.start:r.end]]
	return id, ok
}

// mergeLinear merges by scanning all live pairs for the best each time (the leftmost of
// equal scores wins, as the strict > keeps the first). Scores are cached per left symbol.
func (m *merger) mergeLinear(text string, syms []symbol) (split map[string]int) {
	var (
		scores [linearScanMax]float32
		valid  [linearScanMax]bool
	)
	for i := range syms {
		scores[i], valid[i] = m.pairScore(text, syms, int32(i))
	}
	for {
		best := int32(-1)
		for i := int32(0); i >= 0; i = syms[i].next {
			if valid[i] && (best < 0 || scores[i] > scores[best]) {
				best = i
			}
		}
		if best < 0 {
			return split
		}
		split = m.merge(text, syms, best, split)
		scores[best], valid[best] = m.pairScore(text, syms, best)
		if p := syms[best].prev; p >= 0 {
			scores[p], valid[p] = m.pairScore(text, syms, p)
		}
	}
}

// merge joins syms[l] with its successor.
func (m *merger) merge(text string, syms []symbol, l int32, split map[string]int) map[string]int {
	left := &syms[l]
	r := left.next
	right := &syms[r]
	if m.unused != nil {
		if id := m.pieces[text[left.start:right.end]]; m.unused[id] {
			if split == nil {
				split = make(map[string]int)
			}
			// Unused pieces are split back at the boundary of their last merge.
			split[text[left.start:right.end]] = int(left.end - left.start)
		}
	}
	left.piece, _ = m.pairID(text, left, right)
	left.end = right.end
	left.next = right.next
	if right.next >= 0 {
		syms[right.next].prev = l
	}
	right.dead = true
	return split
}

// mergeHeap merges with a max-heap of candidate pairs, O(n log n) for long spans.
func (m *merger) mergeHeap(text string, syms []symbol, st *encodeState) (split map[string]int) {
	h := st.heap[:0]
	suggest := func(l int32) {
		if l < 0 {
			return
		}
		if score, ok := m.pairScore(text, syms, l); ok {
			r := syms[l].next
			h.push(pairCand{score: score, left: l, right: r, mid: syms[l].end, end: syms[r].end})
		}
	}
	for i := range syms {
		suggest(int32(i))
	}
	for len(h) > 0 {
		c := h.pop()
		l, r := &syms[c.left], &syms[c.right]
		if l.dead || r.dead || l.end != c.mid || r.end != c.end {
			continue // one side merged elsewhere since this pair was pushed
		}
		split = m.merge(text, syms, c.left, split)
		suggest(syms[c.left].prev)
		suggest(c.left)
	}
	st.heap = h
	return split
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
func llama2cSymbols(m *merger, text string, from int, dst []symbol) []symbol {
	start := from
	for i := from; i < len(text); i++ {
		if i+1 < len(text) && text[i+1]&0xC0 == 0x80 && i+1-start < 4 {
			continue
		}
		if id, ok := m.lookup(text[start : i+1]); ok {
			dst = append(dst, symbol{start: int32(start), end: int32(i + 1), piece: id})
		} else {
			for j := start; j <= i; j++ {
				dst = append(dst, symbol{start: int32(j), end: int32(j + 1), piece: m.byteID[text[j]], noMerge: true})
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
func sentencePieceSymbols(m *merger, text string, from int, dst []symbol) []symbol {
	for i := from; i < len(text); {
		if n := m.matchUserDefined(text[i:]); n > 0 {
			id, _ := m.lookup(text[i : i+n])
			dst = append(dst, symbol{start: int32(i), end: int32(i + n), piece: id, noMerge: true})
			i += n
			continue
		}
		n := 1
		if text[i] >= utf8.RuneSelf {
			_, n = utf8.DecodeRuneInString(text[i:])
		}
		id, ok := m.lookup(text[i : i+n])
		if !ok {
			id = -1
		}
		dst = append(dst, symbol{start: int32(i), end: int32(i + n), piece: id})
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
