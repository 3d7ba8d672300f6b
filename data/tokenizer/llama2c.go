package tokenizer

import (
	"encoding/binary"
	"fmt"
	"math"
)

// llama2c fixes BOS and EOS at 1 and 2 and the byte-fallback tokens at 3..258, as run.c does.
const (
	llama2cBOS      = 1
	llama2cEOS      = 2
	llama2cByteBase = 3
	// llama2cMinScore is run.c's initial best_score: pairs scored at or below never merge.
	llama2cMinScore = -1e10
	// maxTokenLength bounds the header field; real files have 7 (tok512) to 27 (Llama 2).
	maxTokenLength = maxPieceBytes
)

// llama2cTokenizer reads the llama2.c tokenizer.bin format and encodes exactly as
// run.c encode: dummy-prefix space, codepoint lookup with byte fallback, greedy merges.
type llama2cTokenizer struct {
	vocab
	merger merger
}

// parseLlama2C reads: int32 max_token_length, then per token float32 score, int32 length
// and the token bytes, little endian, until the end of the data.
func parseLlama2C(data []byte) (*llama2cTokenizer, error) {
	if len(data) < 4 {
		return nil, fmt.Errorf("llama2.c tokenizer: %d bytes, too short for the header", len(data))
	}
	maxLen := int32(binary.LittleEndian.Uint32(data))
	if maxLen <= 0 || maxLen > maxTokenLength {
		return nil, fmt.Errorf("llama2.c tokenizer: header max_token_length=%d is not in 1..%d; not a llama2.c tokenizer.bin", maxLen, maxTokenLength)
	}
	var (
		pieces []string
		scores []float32
	)
	for off := 4; off < len(data); {
		if len(data)-off < 8 {
			return nil, fmt.Errorf("llama2.c tokenizer: truncated entry of token %d at byte %d", len(pieces), off)
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(data[off:]))
		n := int32(binary.LittleEndian.Uint32(data[off+4:]))
		off += 8
		if n < 0 || n > maxLen {
			return nil, fmt.Errorf("llama2.c tokenizer: token %d has length %d outside 0..max_token_length=%d", len(pieces), n, maxLen)
		}
		if int(n) > len(data)-off {
			return nil, fmt.Errorf("llama2.c tokenizer: token %d is truncated (needs %d bytes, %d left)", len(pieces), n, len(data)-off)
		}
		pieces = append(pieces, string(data[off:off+int(n)]))
		scores = append(scores, score)
		off += int(n)
	}
	if len(pieces) < llama2cByteBase+256 {
		return nil, fmt.Errorf("llama2.c tokenizer: %d tokens; need at least %d (<unk>, BOS, EOS and the 256 byte tokens)", len(pieces), llama2cByteBase+256)
	}
	for b := 0; b < 256; b++ {
		if v, ok := parseByteToken(pieces[llama2cByteBase+b]); !ok || int(v) != b {
			return nil, fmt.Errorf("llama2.c tokenizer: token %d is %q, want the byte token <0x%02X>", llama2cByteBase+b, pieces[llama2cByteBase+b], b)
		}
	}
	t := &llama2cTokenizer{}
	t.bos, t.eos, t.stripDummy = llama2cBOS, llama2cEOS, true
	t.text = make([]string, len(pieces))
	t.kind = make([]pieceKind, len(pieces))
	t.merger = merger{
		pieces:   make(map[string]int32, len(pieces)),
		scores:   scores,
		minScore: llama2cMinScore,
		unk:      -1,
		symbols:  llama2cSymbols,
	}
	for i, p := range pieces {
		t.text[i] = p
		switch b, isByte := parseByteToken(p); {
		case i == llama2cBOS || i == llama2cEOS:
			t.text[i], t.kind[i] = "", kindControl
		case isByte:
			t.text[i], t.kind[i] = string([]byte{b}), kindByte
		}
		// run.c looks pieces up by binary search in a sorted copy; with duplicates
		// (none in real files) it may find either, we take the first.
		if _, dup := t.merger.pieces[p]; !dup {
			t.merger.pieces[p] = int32(i)
		}
	}
	for b := range t.merger.byteID {
		t.merger.byteID[b] = int32(llama2cByteBase + b)
	}
	t.merger.finishInit()
	return t, nil
}

// Encode follows run.c: a " " is prepended to non-empty text (the dummy prefix).
func (t *llama2cTokenizer) Encode(text string, addBOS, addEOS bool) []int {
	ids := make([]int, 0, len(text)/3+3)
	if addBOS {
		ids = append(ids, t.bos)
	}
	if text != "" {
		ids = t.merger.encode(" "+text, ids)
	}
	if addEOS {
		ids = append(ids, t.eos)
	}
	return ids
}
