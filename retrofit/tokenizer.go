package retrofit

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/bpe"
	"github.com/dmc-project/dmc/internal/atomicfile"
)

// TokenizerTrainOptions describe `dmc tokenizer train`.
type TokenizerTrainOptions struct {
	Inputs    []string // text files (compressed or not), directories or glob patterns
	Out       string   // tokenizer.model (SentencePiece), tokenizer.bin (llama2.c), or a directory (the Hugging Face layout)
	Vocab     int
	Separator string // document separator removed before counting ("" for none)
	MaxLen    int    // model_max_length of the Hugging Face files
}

// TrainTokenizerFiles learns a BPE vocabulary (byte fallback, <unk> <s> </s>) from the inputs and
// writes it: a ".model" path gets SentencePiece, ".bin" llama2.c, and a directory gets
// tokenizer.model, tokenizer.bin and the Hugging Face tokenizer_config.json. It returns the
// files written.
func TrainTokenizerFiles(o TokenizerTrainOptions) ([]string, error) {
	if len(o.Inputs) == 0 {
		return nil, fmt.Errorf("no input files: give the text to learn the vocabulary from")
	}
	if o.Vocab < 300 {
		return nil, fmt.Errorf("--vocab %d is too small: 259 ids are reserved (<unk>, <s>, </s> and 256 byte tokens) and the characters of the corpus need more", o.Vocab)
	}
	inputs, err := data.TextFiles(o.Inputs)
	if err != nil {
		return nil, err
	}
	var readers []io.Reader
	for _, in := range inputs {
		f, err := data.OpenText(in)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		readers = append(readers, f, strings.NewReader("\n"))
	}
	pieces, err := bpe.Train(io.MultiReader(readers...), o.Vocab, o.Separator)
	if err != nil {
		return nil, err
	}
	var sp, bin bytes.Buffer
	if err := bpe.WriteSentencePiece(&sp, pieces); err != nil {
		return nil, err
	}
	if err := bpe.WriteLlama2C(&bin, pieces); err != nil {
		return nil, err
	}
	switch strings.ToLower(filepath.Ext(o.Out)) {
	case ".model":
		return []string{o.Out}, atomicfile.Write(o.Out, sp.Bytes())
	case ".bin":
		return []string{o.Out}, atomicfile.Write(o.Out, bin.Bytes())
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	binPath := filepath.Join(o.Out, "tokenizer.bin")
	if err := atomicfile.Write(binPath, bin.Bytes()); err != nil {
		return nil, err
	}
	files, err := WriteHFTokenizer(o.Out, binPath, max(o.MaxLen, 1))
	return append([]string{binPath}, files...), err
}
