package bpe

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/data/synth"
	"github.com/dmc-project/dmc/data/tokenizer"
)

// A trained vocabulary loads through the llama2.c tokenizer and round-trips text, including
// characters it never saw (byte fallback), while compressing the training text.
func TestTrainWriteLoadRoundTrip(t *testing.T) {
	var corpus bytes.Buffer
	if err := synth.Write(&corpus, 200_000, 3); err != nil {
		t.Fatal(err)
	}
	pieces, err := Train(bytes.NewReader(corpus.Bytes()), 512, synth.Separator)
	if err != nil {
		t.Fatal(err)
	}
	if len(pieces) != 512 {
		t.Fatalf("got %d pieces, want 512", len(pieces))
	}
	path := filepath.Join(t.TempDir(), "tok.bin")
	f, _ := os.Create(path)
	if err := WriteLlama2C(f, pieces); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tok, err := tokenizer.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	stories := strings.Split(corpus.String(), synth.Separator)
	var nBytes, nTok int
	for _, s := range stories[:50] {
		s = strings.TrimSpace(s)
		ids := tok.Encode(s, true, false)
		if got := tok.Decode(ids); got != s {
			t.Fatalf("round trip:\n got %q\nwant %q", got, s)
		}
		nBytes += len(s)
		nTok += len(ids)
	}
	if ratio := float64(nBytes) / float64(nTok); ratio < 3 {
		t.Errorf("only %.2f bytes per token: the merges do not compress the corpus", ratio)
	}
	unseen := "Zoë ate 寿司 🍣"
	if got := tok.Decode(tok.Encode(unseen, true, false)); got != unseen {
		t.Errorf("byte fallback round trip: got %q", got)
	}
}

func TestTrainErrors(t *testing.T) {
	if _, err := Train(strings.NewReader("   \n"), 512, ""); err == nil {
		t.Error("empty corpus accepted")
	}
	if _, err := Train(strings.NewReader("abc def"), 100, ""); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("tiny vocab: %v", err)
	}
}
