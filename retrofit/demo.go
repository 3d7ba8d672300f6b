package retrofit

import (
	"bufio"
	"bytes"
	"os"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data/bpe"
	"github.com/dmc-project/dmc/data/synth"
	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/model"
)

// WriteStoryCorpus writes a generated story corpus of about bytes bytes (documents separated
// as data.Prepare expects), deterministic in seed: the demo's embedded data.
func WriteStoryCorpus(path string, bytes_ int, seed uint64) error {
	var buf bytes.Buffer
	if err := synth.Write(&buf, bytes_, seed); err != nil {
		return err
	}
	return atomicfile.Write(path, buf.Bytes())
}

// TrainTokenizer trains a BPE tokenizer of vocab tokens on a story corpus and writes it in the
// llama2.c tokenizer.bin format.
func TrainTokenizer(corpus, out string, vocab int) error {
	f, err := os.Open(corpus)
	if err != nil {
		return err
	}
	pieces, err := bpe.Train(bufio.NewReader(f), vocab, synth.Separator)
	f.Close()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := bpe.WriteLlama2C(&buf, pieces); err != nil {
		return err
	}
	return atomicfile.Write(out, buf.Bytes())
}

// WriteRandomInit writes a randomly initialised model of cfg (deterministic in seed) as a
// Hugging Face fp32 directory, the starting point of a pre-training run.
func WriteRandomInit(dir string, cfg model.Config, seed uint64) error {
	w, err := model.RandomParams[float32](cfg, seed)
	if err != nil {
		return err
	}
	return checkpoints.WriteHF(dir, w, "fp32", nil, 1<<40)
}
