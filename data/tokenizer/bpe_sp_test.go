package tokenizer

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/data/bpe"
	"github.com/dmc-project/dmc/data/synth"
)

// A vocabulary trained by data/bpe, written as SentencePiece tokenizer.model, encodes and
// decodes exactly as the same vocabulary written as llama2.c tokenizer.bin, and as the
// sentencepiece library (github.com/eliben/go-sentencepiece) encodes it.
func TestBPESentencePieceMatchesLlama2C(t *testing.T) {
	var cb strings.Builder
	if err := synth.Write(&cb, 200_000, 7); err != nil {
		t.Fatal(err)
	}
	corpus := cb.String()
	pieces, err := bpe.Train(strings.NewReader(corpus), 400, synth.Separator)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var bin, model bytes.Buffer
	if err := bpe.WriteLlama2C(&bin, pieces); err != nil {
		t.Fatal(err)
	}
	if err := bpe.WriteSentencePiece(&model, pieces); err != nil {
		t.Fatal(err)
	}
	binPath, modelPath := filepath.Join(dir, "tokenizer.bin"), filepath.Join(dir, "tokenizer.model")
	os.WriteFile(binPath, bin.Bytes(), 0o644)
	os.WriteFile(modelPath, model.Bytes(), 0o644)
	a, err := Load(binPath)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load(modelPath)
	if err != nil {
		t.Fatal(err)
	}
	// The library sizes its merge buffer by its longest piece and panics when two adjacent
	// symbols are longer together (a small vocabulary's case; Llama 2's has long pieces): its
	// copy of the model gets one more, long, never-matching piece at the end.
	var padded bytes.Buffer
	if err := bpe.WriteSentencePiece(&padded, append(pieces[:len(pieces):len(pieces)], bpe.Piece{Text: strings.Repeat("\x01", 256), Score: -1e9})); err != nil {
		t.Fatal(err)
	}
	lib, err := newLibrary(padded.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	texts := append(strings.Split(corpus, synth.Separator)[:50], "Unseen wörds, digits 12345 and  two  spaces.", "", " leading space", "émoji 🙂 bytes")
	for _, text := range texts {
		ia, ib := a.Encode(text, true, false), b.Encode(text, true, false)
		if !slices.Equal(ia, ib) {
			t.Fatalf("%q: tokenizer.bin %v, tokenizer.model %v", text, ia, ib)
		}
		il, err := lib.encode(text)
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if !slices.Equal(ib[1:], il) {
			t.Fatalf("%q: ours %v, sentencepiece library %v", text, ib[1:], il)
		}
		if a.Decode(ia) != b.Decode(ib) {
			t.Fatalf("%q decodes to %q and %q", text, a.Decode(ia), b.Decode(ib))
		}
	}
	// A llama2.c file reads back to the same pieces.
	back, err := bpe.ReadLlama2C(bytes.NewReader(bin.Bytes()))
	if err != nil || len(back) != len(pieces) || back[300] != pieces[300] {
		t.Fatalf("ReadLlama2C: %d pieces, %v", len(back), err)
	}
}
