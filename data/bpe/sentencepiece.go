package bpe

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// SentencePiece ModelProto field numbers and enums (sentencepiece_model.proto), the ones a BPE
// model with byte fallback needs.
const (
	spModelPieces, spModelTrainer, spModelNormalizer = 1, 2, 3
	spPiecePiece, spPieceScore, spPieceType          = 1, 2, 3
	spTrainerModelType, spTrainerVocabSize           = 3, 4
	spTrainerByteFallback                            = 35
	spTrainerUnkID, spTrainerBosID, spTrainerEosID   = 40, 41, 42
	spTrainerPadID                                   = 43
	spNormName, spNormAddDummyPrefix                 = 1, 3
	spNormRemoveExtraSpaces, spNormEscapeWhitespaces = 4, 5

	spTypeNormal, spTypeUnknown, spTypeControl, spTypeByte = 1, 2, 3, 6
	spModelBPE                                             = 2
)

// WriteSentencePiece writes pieces as a SentencePiece BPE model (tokenizer.model, the
// ModelProto protobuf) that encodes exactly as the llama2.c tokenizer.bin of the same pieces:
// the same merges by score, byte fallback, a dummy prefix, spaces escaped as "▁", "<unk>",
// "<s>" and "</s>" as the unknown and control pieces. Hugging Face's LlamaTokenizer and the
// sentencepiece library read it.
func WriteSentencePiece(w io.Writer, pieces []Piece) error {
	var b []byte
	ids := map[string]int{"<unk>": -1, "<s>": -1, "</s>": -1}
	for i, p := range pieces {
		if math.IsNaN(float64(p.Score)) {
			return fmt.Errorf("bpe: piece %q has a NaN score", p.Text)
		}
		typ := spTypeNormal
		text := strings.ReplaceAll(p.Text, " ", "\u2581")
		special := strings.TrimSpace(p.Text) // llama2.c writes BOS and EOS as "\n<s>\n", "\n</s>\n"
		switch {
		case special == "<unk>":
			typ, text = spTypeUnknown, special
		case special == "<s>" || special == "</s>":
			typ, text = spTypeControl, special
		case isByteToken(p.Text):
			typ = spTypeByte
			text = p.Text
		}
		if id, ok := ids[text]; ok && id < 0 && typ != spTypeNormal {
			ids[text] = i
		}
		var m []byte
		m = protowire.AppendTag(m, spPiecePiece, protowire.BytesType)
		m = protowire.AppendString(m, text)
		m = protowire.AppendTag(m, spPieceScore, protowire.Fixed32Type)
		m = protowire.AppendFixed32(m, math.Float32bits(p.Score))
		m = protowire.AppendTag(m, spPieceType, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(typ))
		b = protowire.AppendTag(b, spModelPieces, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	for _, name := range []string{"<unk>", "<s>", "</s>"} {
		if ids[name] < 0 {
			return fmt.Errorf("bpe: the vocabulary has no %s piece", name)
		}
	}
	var t []byte
	varint := func(buf []byte, num protowire.Number, v int64) []byte {
		buf = protowire.AppendTag(buf, num, protowire.VarintType)
		return protowire.AppendVarint(buf, uint64(v))
	}
	t = varint(t, spTrainerModelType, spModelBPE)
	t = varint(t, spTrainerVocabSize, int64(len(pieces)))
	t = varint(t, spTrainerByteFallback, 1)
	t = varint(t, spTrainerUnkID, int64(ids["<unk>"]))
	t = varint(t, spTrainerBosID, int64(ids["<s>"]))
	t = varint(t, spTrainerEosID, int64(ids["</s>"]))
	t = varint(t, spTrainerPadID, -1)
	b = protowire.AppendTag(b, spModelTrainer, protowire.BytesType)
	b = protowire.AppendBytes(b, t)
	var n []byte
	n = protowire.AppendTag(n, spNormName, protowire.BytesType)
	n = protowire.AppendString(n, "identity")
	n = varint(n, spNormAddDummyPrefix, 1)
	n = varint(n, spNormRemoveExtraSpaces, 0)
	n = varint(n, spNormEscapeWhitespaces, 1)
	b = protowire.AppendTag(b, spModelNormalizer, protowire.BytesType)
	b = protowire.AppendBytes(b, n)
	_, err := w.Write(b)
	return err
}

func isByteToken(s string) bool {
	if len(s) != 6 || !strings.HasPrefix(s, "<0x") || s[5] != '>' {
		return false
	}
	for _, c := range s[3:5] {
		if !strings.ContainsRune("0123456789ABCDEFabcdef", c) {
			return false
		}
	}
	return true
}

// ReadLlama2C reads the pieces of a llama2.c tokenizer.bin (WriteLlama2C's format: the longest
// piece's length, then per piece its score, byte length and bytes).
func ReadLlama2C(r io.Reader) ([]Piece, error) {
	br := bufio.NewReader(r)
	var maxLen int32
	if err := binary.Read(br, binary.LittleEndian, &maxLen); err != nil {
		return nil, fmt.Errorf("bpe: tokenizer.bin header: %w", err)
	}
	var pieces []Piece
	for {
		var score float32
		if err := binary.Read(br, binary.LittleEndian, &score); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("bpe: tokenizer.bin piece %d: %w", len(pieces), err)
		}
		var n int32
		if err := binary.Read(br, binary.LittleEndian, &n); err != nil {
			return nil, fmt.Errorf("bpe: tokenizer.bin piece %d: %w", len(pieces), err)
		}
		if n < 0 || n > maxLen || n > 1<<16 {
			return nil, fmt.Errorf("bpe: tokenizer.bin piece %d has length %d (the header says at most %d)", len(pieces), n, maxLen)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, fmt.Errorf("bpe: tokenizer.bin piece %d: %w", len(pieces), err)
		}
		pieces = append(pieces, Piece{Text: string(buf), Score: score})
	}
	if len(pieces) == 0 {
		return nil, errors.New("bpe: tokenizer.bin has no pieces")
	}
	return pieces, nil
}
