package tokenizer

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// spPiece is one entry of a synthetic ModelProto.
type spPiece struct {
	piece string
	score float32
	typ   int32
}

// spSpec describes a synthetic SentencePiece model; nil pointers leave proto defaults.
type spSpec struct {
	pieces         []spPiece
	modelType      int32 // 0 means BPE
	byteFallback   bool
	addDummyPrefix *bool
	removeExtraWS  *bool
	charsmap       []byte
	noNormalizer   bool
}

func boolp(b bool) *bool { return &b }

// build encodes the spec as a ModelProto with protowire, as spm_train would write it.
func (s spSpec) build() []byte {
	var out []byte
	for _, p := range s.pieces {
		var m []byte
		m = protowire.AppendTag(m, fPiecePiece, protowire.BytesType)
		m = protowire.AppendString(m, p.piece)
		m = protowire.AppendTag(m, fPieceScore, protowire.Fixed32Type)
		m = protowire.AppendFixed32(m, math.Float32bits(p.score))
		m = protowire.AppendTag(m, fPieceType, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(p.typ))
		out = protowire.AppendTag(out, fModelPieces, protowire.BytesType)
		out = protowire.AppendBytes(out, m)
	}
	var tr []byte
	mt := s.modelType
	if mt == 0 {
		mt = modelBPE
	}
	tr = protowire.AppendTag(tr, fTrainerModelType, protowire.VarintType)
	tr = protowire.AppendVarint(tr, uint64(mt))
	tr = protowire.AppendTag(tr, fTrainerByteFallback, protowire.VarintType)
	tr = protowire.AppendVarint(tr, protowire.EncodeBool(s.byteFallback))
	out = protowire.AppendTag(out, fModelTrainer, protowire.BytesType)
	out = protowire.AppendBytes(out, tr)
	if s.noNormalizer {
		return out
	}
	var n []byte
	n = protowire.AppendTag(n, fNormName, protowire.BytesType)
	n = protowire.AppendString(n, "identity")
	if s.charsmap != nil {
		n = protowire.AppendTag(n, fNormCharsmap, protowire.BytesType)
		n = protowire.AppendBytes(n, s.charsmap)
	}
	if s.addDummyPrefix != nil {
		n = protowire.AppendTag(n, fNormAddDummyPrefix, protowire.VarintType)
		n = protowire.AppendVarint(n, protowire.EncodeBool(*s.addDummyPrefix))
	}
	if s.removeExtraWS != nil {
		n = protowire.AppendTag(n, fNormRemoveExtraSpaces, protowire.VarintType)
		n = protowire.AppendVarint(n, protowire.EncodeBool(*s.removeExtraWS))
	}
	out = protowire.AppendTag(out, fModelNormalizer, protowire.BytesType)
	return protowire.AppendBytes(out, n)
}

// smallPieces is a tiny BPE vocabulary: ids 0-2 special, then (with bytes) 256 byte
// pieces, then the normal pieces and one user-defined piece.
func smallPieces(withBytes bool) (pieces []spPiece, id func(string) int) {
	pieces = []spPiece{{"<unk>", 0, typeUnknown}, {"<s>", 0, typeControl}, {"</s>", 0, typeControl}}
	if withBytes {
		for b := 0; b < 256; b++ {
			pieces = append(pieces, spPiece{fmt.Sprintf("<0x%02X>", b), 0, typeByte})
		}
	}
	pieces = append(pieces,
		spPiece{"<sep>", 0, typeUserDefined},
		spPiece{"▁a", -1, typeNormal},
		spPiece{"ab", -2, typeNormal},
		spPiece{"▁ab", -3, typeNormal},
		spPiece{"bb", -4, typeNormal},
		spPiece{"▁", -5, typeNormal},
		spPiece{"a", -6, typeNormal},
		spPiece{"b", -7, typeNormal},
		spPiece{"c", -8, typeNormal},
		spPiece{"é", -9, typeNormal},
		spPiece{"▁c", -0.5, typeUnused},
		spPiece{"▁cb", -0.6, typeNormal},
		// A long piece that no merge can form: go-sentencepiece sizes its merge buffer
		// by the longest piece and panics on longer concatenations.
		spPiece{strings.Repeat("q", 64), -100, typeNormal},
	)
	index := map[string]int{}
	for i, p := range pieces {
		index[p.piece] = i
	}
	return pieces, func(s string) int {
		i, ok := index[s]
		if !ok {
			panic("no piece " + s)
		}
		return i
	}
}

func TestSyntheticSentencePieceModels(t *testing.T) {
	bytePieces, bid := smallPieces(true)
	plainPieces, pid := smallPieces(false)
	byteTok := func(b byte) int { return 3 + int(b) }
	spaceInside := append(append([]spPiece(nil), plainPieces...), spPiece{"b▁", 0.5, typeNormal})
	sid := func(s string) int {
		for i, p := range spaceInside {
			if p.piece == s {
				return i
			}
		}
		panic("no piece " + s)
	}
	tests := []struct {
		name string
		spec spSpec
		text string
		want []int
		// decoded is the Decode result when it differs from text.
		decoded string
		// libDiffers says why go-sentencepiece gives other ids, if it does.
		libDiffers string
	}{
		{"merge order, unused piece resegmented", spSpec{pieces: bytePieces, byteFallback: true}, "ab c",
			[]int{1, bid("▁ab"), bid("▁"), bid("c"), 2}, "", "it emits unused pieces"},
		{"unused piece as an intermediate", spSpec{pieces: bytePieces, byteFallback: true}, "cb",
			[]int{1, bid("▁cb"), 2}, "", ""},
		{"leftmost of tied pairs", spSpec{pieces: bytePieces, byteFallback: true}, "bbb",
			[]int{1, bid("▁"), bid("bb"), bid("b"), 2}, "", ""},
		{"user-defined piece is atomic", spSpec{pieces: bytePieces, byteFallback: true}, "a<sep>b",
			[]int{1, bid("▁a"), bid("<sep>"), bid("b"), 2}, "", ""},
		{"byte fallback", spSpec{pieces: bytePieces, byteFallback: true}, "aé中",
			[]int{1, bid("▁a"), bid("é"), byteTok(0xE4), byteTok(0xB8), byteTok(0xAD), 2}, "", ""},
		{"unknown without byte fallback", spSpec{pieces: plainPieces}, "a中b",
			[]int{1, pid("▁a"), 0, pid("b"), 2}, "a ⁇ b", ""},
		{"one unk per run of unknown characters", spSpec{pieces: plainPieces}, "a中文b",
			[]int{1, pid("▁a"), 0, pid("b"), 2}, "a ⁇ b", "it emits one <unk> per character"},
		{"no normalizer spec means proto defaults", spSpec{pieces: plainPieces, noNormalizer: true}, "  a   b ",
			[]int{1, pid("▁a"), pid("▁"), pid("b"), 2}, "a b", ""},
		{"no dummy prefix, extra spaces kept", spSpec{pieces: plainPieces, addDummyPrefix: boolp(false), removeExtraWS: boolp(false)}, "a  b",
			[]int{1, pid("a"), pid("▁"), pid("▁"), pid("b"), 2}, "", ""},
		{"extra spaces removed", spSpec{pieces: plainPieces, addDummyPrefix: boolp(true), removeExtraWS: boolp(true)}, " a  bb ",
			[]int{1, pid("▁a"), pid("▁"), pid("bb"), 2}, "a bb", ""},
		{"empty text", spSpec{pieces: plainPieces}, "", []int{1, 2}, "", "it encodes \"\" as [<unk>]"},
		{"piece with an inner space: no word split", spSpec{pieces: spaceInside}, "b b",
			[]int{1, sid("▁"), sid("b▁"), sid("b"), 2}, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Parse(tc.spec.build(), FormatAuto)
			if err != nil {
				t.Fatal(err)
			}
			got := tok.Encode(tc.text, true, true)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Encode(%q) = %v, want %v", tc.text, got, tc.want)
			}
			// Cross-check with go-sentencepiece where it implements the same rules.
			lib, err := newLibrary(tc.spec.build())
			if err != nil {
				t.Fatalf("go-sentencepiece: %v", err)
			}
			ids, err := lib.encode(tc.text)
			if err != nil {
				t.Fatalf("go-sentencepiece: %v", err)
			}
			if same := reflect.DeepEqual(ids, got[1:len(got)-1]); same != (tc.libDiffers == "") {
				t.Errorf("go-sentencepiece gives %v (expected to differ: %q)", ids, tc.libDiffers)
			}
			wantText := tc.text
			if tc.decoded != "" {
				wantText = tc.decoded
			}
			if got := tok.Decode(got); got != wantText {
				t.Errorf("Decode = %q, want %q", got, wantText)
			}
		})
	}
}

func TestSentencePieceRejects(t *testing.T) {
	pieces, _ := smallPieces(false)
	bytePieces, _ := smallPieces(true)
	noUnk := append([]spPiece(nil), pieces[1:]...)
	badByte := append(append([]spPiece(nil), pieces...), spPiece{"<0xZZ>", 0, typeByte})
	hugePiece := append(append([]spPiece(nil), pieces...), spPiece{strings.Repeat("x", maxPieceBytes+1), 0, typeNormal})
	bosNotControl := append([]spPiece(nil), pieces...)
	bosNotControl[1].typ = typeNormal
	tests := []struct {
		name, wantErr string
		spec          spSpec
	}{
		{"unigram", "not BPE", spSpec{pieces: pieces, modelType: 1}},
		{"nfkc charsmap", "charsmap", spSpec{pieces: pieces, charsmap: []byte{1, 2, 3}}},
		{"byte fallback without byte pieces", "missing", spSpec{pieces: pieces, byteFallback: true}},
		{"bytes present, fallback missing a byte", "missing", spSpec{pieces: bytePieces[:100], byteFallback: true}},
		{"no unk", "UNKNOWN", spSpec{pieces: noUnk}},
		{"malformed byte piece", "<0xNN>", spSpec{pieces: badByte}},
		{"bos is not a control piece", "bos_id", spSpec{pieces: bosNotControl}},
		{"no pieces", "no pieces", spSpec{}},
		{"piece too long", "bytes long", spSpec{pieces: hugePiece}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.spec.build(), FormatSentencePiece)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestRewriteNormalizer(t *testing.T) {
	needAsset(t, llamaModelPath)
	tok := mustLoad(t, llamaModelPath).(*sentencePieceTokenizer)
	if !tok.addDummyPrefix || tok.removeExtraWS {
		t.Errorf("Llama 2 normalizer read as add_dummy_prefix=%v remove_extra_whitespaces=%v, want true, false", tok.addDummyPrefix, tok.removeExtraWS)
	}
	spec := spSpec{pieces: []spPiece{{"<unk>", 0, typeUnknown}}, addDummyPrefix: boolp(true), removeExtraWS: boolp(true)}
	out, err := rewriteNormalizer(spec.build())
	if err != nil {
		t.Fatal(err)
	}
	m, err := parseModelProto(out)
	if err != nil {
		t.Fatal(err)
	}
	if m.addDummyPrefix || m.removeExtraWS || m.normName != "identity" || len(m.pieces) != 1 {
		t.Errorf("after rewrite: add_dummy_prefix=%v remove_extra_whitespaces=%v name=%q pieces=%d",
			m.addDummyPrefix, m.removeExtraWS, m.normName, len(m.pieces))
	}
}

// Long texts go through the word cache; words with <unk> runs (whose tokens depend on the
// previous word) must still match one merge pass over the whole text.
func TestWordCacheWithUnknowns(t *testing.T) {
	plain, _ := smallPieces(false)
	tok, err := Parse(spSpec{pieces: plain}.build(), FormatSentencePiece)
	if err != nil {
		t.Fatal(err)
	}
	m := &tok.(*sentencePieceTokenizer).merger
	text := " " + strings.Repeat("ab 中 文b a中 bb ab  cb c ", 400)
	if len(text) < wordCacheMinText {
		t.Fatalf("text of %d bytes does not reach the word cache", len(text))
	}
	cached := m.encode(text, nil)
	m.splitAtSpaces = false
	whole := m.encode(text, nil)
	m.splitAtSpaces = true
	if !reflect.DeepEqual(cached, whole) {
		t.Errorf("word-by-word with cache differs from whole-text encoding")
	}
}
