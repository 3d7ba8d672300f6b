package retrofit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/data/bpe"
	"github.com/dmc-project/dmc/data/tokenizer"
)

// hfSample is encoded by both tokenizers when a llama2.c file is converted: the converted
// SentencePiece model must give the same ids (letters, digits, punctuation, runs of spaces,
// non-ASCII text that needs byte fallback, an empty string).
var hfSample = []string{"Once upon a time, there was a little girl named Lily.", "  two  spaces and\ttabs\nnewlines",
	"Zahlen 12345, émigré, naïve café; 中文 🙂", "", "a"}

// WriteHFTokenizer writes the tokenizer at src into dir in the layout Hugging Face's
// AutoTokenizer loads: tokenizer.model (SentencePiece; a llama2.c tokenizer.bin is converted,
// and the conversion is checked to encode identically), tokenizer_config.json naming
// LlamaTokenizer with <s>, </s>, <unk> and BOS added, and special_tokens_map.json. It returns the
// files written.
func WriteHFTokenizer(dir, src string, modelMaxLength int) ([]string, error) {
	orig, err := tokenizer.Load(src)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(src)
	if err != nil {
		return nil, err
	}
	modelBytes := raw
	_, spErr := tokenizer.Parse(raw, tokenizer.FormatSentencePiece)
	if strings.ToLower(filepath.Ext(src)) == ".bin" || spErr != nil {
		pieces, err := bpe.ReadLlama2C(bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		if err := bpe.WriteSentencePiece(&buf, pieces); err != nil {
			return nil, fmt.Errorf("converting %s to SentencePiece: %w", src, err)
		}
		modelBytes = buf.Bytes()
		conv, err := tokenizer.Parse(modelBytes, tokenizer.FormatSentencePiece)
		if err != nil {
			return nil, fmt.Errorf("converting %s to SentencePiece: %w", src, err)
		}
		for _, s := range hfSample {
			a, b := orig.Encode(s, true, false), conv.Encode(s, true, false)
			if fmt.Sprint(a) != fmt.Sprint(b) {
				return nil, fmt.Errorf("converting %s to SentencePiece: %q encodes to %v instead of %v; the file keeps only tokenizer.bin", src, s, b, a)
			}
		}
		if conv.BOS() != orig.BOS() || conv.EOS() != orig.EOS() {
			return nil, fmt.Errorf("converting %s to SentencePiece: BOS/EOS %d/%d instead of %d/%d", src, conv.BOS(), conv.EOS(), orig.BOS(), orig.EOS())
		}
	}
	cfg := map[string]any{
		"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": nil,
		"add_bos_token": true, "add_eos_token": false, "model_max_length": modelMaxLength,
		"clean_up_tokenization_spaces": false, "legacy": true, "sp_model_kwargs": map[string]any{},
	}
	special := map[string]any{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
	files := map[string][]byte{"tokenizer.model": modelBytes}
	for name, v := range map[string]any{"tokenizer_config.json": cfg, "special_tokens_map.json": special} {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // "<s>", not "\u003cs\u003e"
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
		files[name] = b.Bytes()
	}
	var out []string
	for _, name := range []string{"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, files[name], 0o644); err != nil {
			return out, err
		}
		out = append(out, p)
	}
	return out, nil
}
