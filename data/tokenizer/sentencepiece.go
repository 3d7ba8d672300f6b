package tokenizer

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of sentencepiece_model.proto used here.
const (
	fModelPieces     = 1
	fModelTrainer    = 2
	fModelNormalizer = 3

	fPiecePiece = 1
	fPieceScore = 2
	fPieceType  = 3

	fTrainerModelType    = 3
	fTrainerByteFallback = 35
	fTrainerUnkID        = 40
	fTrainerBosID        = 41
	fTrainerEosID        = 42
	fTrainerUnkSurface   = 44

	fNormName              = 1
	fNormCharsmap          = 2
	fNormAddDummyPrefix    = 3
	fNormRemoveExtraSpaces = 4
	fNormEscapeWhitespaces = 5
	fNormRuleTSV           = 6
)

// SentencePiece piece types and model types.
const (
	typeNormal      = 1
	typeUnknown     = 2
	typeControl     = 3
	typeUserDefined = 4
	typeUnused      = 5
	typeByte        = 6

	modelBPE = 2
)

const spaceMark = "\u2581" // "▁", SentencePiece's escaped space

// spModel is the part of a ModelProto this package needs.
type spModel struct {
	pieces          []string
	scores          []float32
	types           []int32
	modelType       int32
	byteFallback    bool
	unkID           int32
	bosID, eosID    int32
	unkSurface      string
	normName        string
	charsmap        []byte
	ruleTSV         string
	addDummyPrefix  bool
	removeExtraWS   bool
	escapeWS        bool
	normalizerFound bool
}

// parseModelProto decodes the fields of interest, applying proto2 defaults.
func parseModelProto(data []byte) (*spModel, error) {
	m := &spModel{modelType: 1, unkID: 0, bosID: 1, eosID: 2, unkSurface: " \u2047 ",
		addDummyPrefix: true, removeExtraWS: true, escapeWS: true}
	err := eachField(data, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == fModelPieces && typ == protowire.BytesType:
			return m.addPiece(v)
		case num == fModelTrainer && typ == protowire.BytesType:
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == fTrainerModelType && typ == protowire.VarintType:
					m.modelType = int32(x)
				case num == fTrainerByteFallback && typ == protowire.VarintType:
					m.byteFallback = x != 0
				case num == fTrainerUnkID && typ == protowire.VarintType:
					m.unkID = int32(x)
				case num == fTrainerBosID && typ == protowire.VarintType:
					m.bosID = int32(x)
				case num == fTrainerEosID && typ == protowire.VarintType:
					m.eosID = int32(x)
				case num == fTrainerUnkSurface && typ == protowire.BytesType:
					m.unkSurface = string(v)
				}
				return nil
			})
		case num == fModelNormalizer && typ == protowire.BytesType:
			m.normalizerFound = true
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == fNormName && typ == protowire.BytesType:
					m.normName = string(v)
				case num == fNormCharsmap && typ == protowire.BytesType:
					m.charsmap = v
				case num == fNormRuleTSV && typ == protowire.BytesType:
					m.ruleTSV = string(v)
				case num == fNormAddDummyPrefix && typ == protowire.VarintType:
					m.addDummyPrefix = x != 0
				case num == fNormRemoveExtraSpaces && typ == protowire.VarintType:
					m.removeExtraWS = x != 0
				case num == fNormEscapeWhitespaces && typ == protowire.VarintType:
					m.escapeWS = x != 0
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *spModel) addPiece(data []byte) error {
	var (
		piece string
		score float32
		typ   int32 = typeNormal
	)
	err := eachField(data, func(num protowire.Number, t protowire.Type, v []byte, x uint64) error {
		switch {
		case num == fPiecePiece && t == protowire.BytesType:
			piece = string(v)
		case num == fPieceScore && t == protowire.Fixed32Type:
			score = math.Float32frombits(uint32(x))
		case num == fPieceType && t == protowire.VarintType:
			typ = int32(x)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("piece %d: %w", len(m.pieces), err)
	}
	m.pieces = append(m.pieces, piece)
	m.scores = append(m.scores, score)
	m.types = append(m.types, typ)
	return nil
}

// eachField walks the fields of one protobuf message; fixed32/64 values arrive in x.
func eachField(data []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return fmt.Errorf("bad protobuf tag: %w", protowire.ParseError(n))
		}
		data = data[n:]
		var (
			v []byte
			x uint64
		)
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(data)
		case protowire.Fixed32Type:
			var x32 uint32
			x32, n = protowire.ConsumeFixed32(data)
			x = uint64(x32)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(data)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(data)
		default:
			n = protowire.ConsumeFieldValue(num, typ, data)
		}
		if n < 0 {
			return fmt.Errorf("bad protobuf field %d: %w", num, protowire.ParseError(n))
		}
		data = data[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// sentencePieceTokenizer encodes SentencePiece BPE models with this package's merger over
// the parsed pieces (the algorithm of sentencepiece bpe_model.cc: best score first, leftmost
// on ties, user-defined pieces atomic, unused pieces resegmented, byte fallback or one <unk>
// per run of unknown characters).
//
// github.com/eliben/go-sentencepiece v0.6.0 is not used at run time: it rejects Llama 2's
// normalizer options, and it panics (slice bounds out of range in its merge buffer) on any
// text whose merges put two pieces of combined length above its longest piece next to each
// other; with Llama 2 that is any run of 16 or more spaces, common in code. The tests use it
// as a cross-check on inputs where it works.
type sentencePieceTokenizer struct {
	vocab
	merger         merger
	addDummyPrefix bool
	removeExtraWS  bool
}

func parseSentencePiece(data []byte) (tok *sentencePieceTokenizer, err error) {
	m, err := parseModelProto(data)
	if err != nil {
		return nil, fmt.Errorf("SentencePiece model: %w", err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("SentencePiece model: %w", err)
	}
	t := &sentencePieceTokenizer{addDummyPrefix: m.addDummyPrefix, removeExtraWS: m.removeExtraWS}
	// As sentencepiece's Decode: the leading space goes when either option is set.
	t.bos, t.eos, t.stripDummy = int(m.bosID), int(m.eosID), m.addDummyPrefix || m.removeExtraWS
	n := len(m.pieces)
	t.text = make([]string, n)
	t.kind = make([]pieceKind, n)
	t.merger = merger{
		pieces:   make(map[string]int32, n),
		scores:   m.scores,
		minScore: float32(math.Inf(-1)),
		unk:      m.unkID,
		symbols:  sentencePieceSymbols,
		mergeUnk: true,
	}
	for i := range t.merger.byteID {
		t.merger.byteID[i] = -1
	}
	for i, p := range m.pieces {
		surface := strings.ReplaceAll(p, spaceMark, " ")
		switch m.types[i] {
		case typeNormal, typeUserDefined, typeUnused:
			t.text[i] = surface
			if _, dup := t.merger.pieces[surface]; !dup {
				t.merger.pieces[surface] = int32(i)
			}
			switch m.types[i] {
			case typeUserDefined:
				t.merger.userDefined = append(t.merger.userDefined, surface)
			case typeUnused:
				if t.merger.unused == nil {
					t.merger.unused = make(map[int32]bool)
				}
				t.merger.unused[int32(i)] = true
			}
		case typeControl:
			t.kind[i] = kindControl
		case typeUnknown:
			t.text[i], t.kind[i] = m.unkSurface, kindUnknown
		case typeByte:
			b, _ := parseByteToken(p) // validate checked the form
			t.text[i], t.kind[i] = string([]byte{b}), kindByte
			if m.byteFallback {
				t.merger.byteID[b] = int32(i)
			}
		}
	}
	t.merger.finishInit()
	return t, nil
}

// validate rejects what this package cannot tokenize exactly.
func (m *spModel) validate() error {
	if len(m.pieces) == 0 {
		return errors.New("no pieces")
	}
	if m.modelType != modelBPE {
		return fmt.Errorf("model_type %d is not BPE (2); only BPE models (Llama family) are supported", m.modelType)
	}
	if len(m.charsmap) > 0 || m.ruleTSV != "" {
		return fmt.Errorf("normalizer %q rewrites text (precompiled charsmap); only the identity normalizer of Llama-family models is supported", m.normName)
	}
	if !m.escapeWS {
		return errors.New("normalizer_spec.escape_whitespaces=false is not supported")
	}
	unk := -1
	byteSeen := make([]bool, 256)
	for i, p := range m.pieces {
		switch m.types[i] {
		case typeNormal, typeUserDefined, typeUnused, typeControl:
			if p == "" && m.types[i] != typeControl {
				return fmt.Errorf("piece %d is empty", i)
			}
			if len(p) > maxPieceBytes {
				return fmt.Errorf("piece %d is %d bytes long, more than the %d supported", i, len(p), maxPieceBytes)
			}
		case typeUnknown:
			if unk >= 0 {
				return fmt.Errorf("pieces %d and %d are both <unk>", unk, i)
			}
			unk = i
		case typeByte:
			b, ok := parseByteToken(p)
			if !ok {
				return fmt.Errorf("byte piece %d is %q, want <0xNN>", i, p)
			}
			byteSeen[b] = true
		default:
			return fmt.Errorf("piece %d has unknown type %d", i, m.types[i])
		}
	}
	if unk < 0 || int32(unk) != m.unkID {
		return fmt.Errorf("unk_id %d does not name the UNKNOWN piece (found at %d)", m.unkID, unk)
	}
	if m.byteFallback {
		for b, ok := range byteSeen {
			if !ok {
				return fmt.Errorf("byte_fallback is set but piece <0x%02X> is missing", b)
			}
		}
	}
	for _, id := range []struct {
		name string
		v    int32
	}{{"bos_id", m.bosID}, {"eos_id", m.eosID}} {
		if id.v >= int32(len(m.pieces)) || id.v < -1 || (id.v >= 0 && m.types[id.v] != typeControl) {
			return fmt.Errorf("%s %d does not name a control piece", id.name, id.v)
		}
	}
	return nil
}

// normalize applies the normalizer options this package handles itself.
func (t *sentencePieceTokenizer) normalize(text string) string {
	if t.removeExtraWS {
		text = strings.Join(strings.FieldsFunc(text, func(r rune) bool { return r == ' ' }), " ")
	}
	if t.addDummyPrefix && text != "" {
		text = " " + text
	}
	return text
}

func (t *sentencePieceTokenizer) Encode(text string, addBOS, addEOS bool) []int {
	norm := t.normalize(text)
	ids := make([]int, 0, len(norm)/3+3)
	if addBOS && t.bos >= 0 {
		ids = append(ids, t.bos)
	}
	ids = t.merger.encode(norm, ids)
	if addEOS && t.eos >= 0 {
		ids = append(ids, t.eos)
	}
	return ids
}
