package tokenizer

import (
	"bytes"
	"fmt"
	"os"

	sentencepiece "github.com/eliben/go-sentencepiece"
	"google.golang.org/protobuf/encoding/protowire"
)

// This file holds the cross-check against github.com/eliben/go-sentencepiece.

// rewriteNormalizer returns the ModelProto with normalizer_spec.add_dummy_prefix and
// remove_extra_whitespaces set to false: go-sentencepiece rejects models that set them
// (Llama 2 does), the cross-check applies both itself (see spLibrary.encode).
func rewriteNormalizer(data []byte) ([]byte, error) {
	out := make([]byte, 0, len(data)+16)
	var norm []byte
	err := walkRaw(data, func(num protowire.Number, raw, v []byte) {
		if num == fModelNormalizer {
			norm = append(norm, v...) // repeated message fields merge
			return
		}
		out = append(out, raw...)
	})
	if err != nil {
		return nil, err
	}
	var spec []byte
	if err := walkRaw(norm, func(num protowire.Number, raw, _ []byte) {
		if num != fNormAddDummyPrefix && num != fNormRemoveExtraSpaces {
			spec = append(spec, raw...)
		}
	}); err != nil {
		return nil, fmt.Errorf("normalizer_spec: %w", err)
	}
	spec = protowire.AppendTag(spec, fNormAddDummyPrefix, protowire.VarintType)
	spec = protowire.AppendVarint(spec, 0)
	spec = protowire.AppendTag(spec, fNormRemoveExtraSpaces, protowire.VarintType)
	spec = protowire.AppendVarint(spec, 0)
	out = protowire.AppendTag(out, fModelNormalizer, protowire.BytesType)
	out = protowire.AppendBytes(out, spec)
	return out, nil
}

// walkRaw calls f with each field's number, its complete encoding, and for length-delimited
// fields the payload.
func walkRaw(data []byte, f func(num protowire.Number, raw, v []byte)) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return fmt.Errorf("bad protobuf tag: %w", protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, data[n:])
		if m < 0 {
			return fmt.Errorf("bad protobuf field %d: %w", num, protowire.ParseError(m))
		}
		var v []byte
		if typ == protowire.BytesType {
			v, _ = protowire.ConsumeBytes(data[n:])
		}
		f(num, data[:n+m], v)
		data = data[n+m:]
	}
	return nil
}

// spLibrary wraps a go-sentencepiece processor; its panics become errors.
type spLibrary struct {
	proc                          *sentencepiece.Processor
	addDummyPrefix, removeExtraWS bool
}

func newLibrary(data []byte) (lib *spLibrary, err error) {
	defer func() {
		if r := recover(); r != nil {
			lib, err = nil, fmt.Errorf("go-sentencepiece panicked: %v", r)
		}
	}()
	m, err := parseModelProto(data)
	if err != nil {
		return nil, err
	}
	rewritten, err := rewriteNormalizer(data)
	if err != nil {
		return nil, err
	}
	proc, err := sentencepiece.NewProcessor(bytes.NewReader(rewritten))
	if err != nil {
		return nil, err
	}
	return &spLibrary{proc: proc, addDummyPrefix: m.addDummyPrefix, removeExtraWS: m.removeExtraWS}, nil
}

func newLibraryFromFile(path string) (*spLibrary, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return newLibrary(data)
}

// encode applies the normalizer options the library refuses, then encodes (no BOS/EOS).
func (l *spLibrary) encode(text string) (ids []int, err error) {
	defer func() {
		if r := recover(); r != nil {
			ids, err = nil, fmt.Errorf("go-sentencepiece panicked: %v", r)
		}
	}()
	t := sentencePieceTokenizer{addDummyPrefix: l.addDummyPrefix, removeExtraWS: l.removeExtraWS}
	for _, tk := range l.proc.Encode(t.normalize(text)) {
		ids = append(ids, tk.ID)
	}
	return ids, nil
}
