package tasks

import (
	"testing"

	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/internal/dmctest"
	"github.com/dmc-project/dmc/model"
)

// Scoring the choices of an item from one shared context cache gives the numbers of scoring
// each choice whole, bit for bit, with every cache kind (vanilla, DMC, the eviction policies),
// and with contexts left-truncated to a short window.
func TestSharedContextEqualsPerRequest(t *testing.T) {
	w := model.Convert[float32](dmctest.Stories260K(t))
	tok, err := tokenizer.Load(dmctest.AssetPath("tinyllamas-stories260K/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	dc := dmc.DefaultConfig()
	dc.DecisionChannel, dc.DecisionOffset = 0, 2
	caches := map[string]func() (model.KVCache[float32], error){
		"vanilla": func() (model.KVCache[float32], error) { return model.NewVanillaCache[float32](w.Config), nil },
		"dmc":     func() (model.KVCache[float32], error) { return dmc.NewCompressedCache[float32](w.Config, dc) },
	}
	for _, p := range []string{"window", "streaming", "h2o", "tova"} {
		ec := dmc.EvictConfig{Policy: p, Budget: 12}
		caches[p] = func() (model.KVCache[float32], error) { return dmc.NewEvictingCache[float32](w.Config, ec) }
	}
	ctx := "Once upon a time, there was a little girl named Lily. She loved to play outside. One day"
	item := []Request{{Context: ctx, Continuation: " she saw a big dog."}, {Context: ctx, Continuation: " it rained."},
		{Context: ctx, Continuation: " her mom gave her a red ball and she was happy."}, {Context: ctx, Continuation: " the sun"}}
	for name, f := range caches {
		for _, maxLen := range []int{512, 20} {
			dec := model.NewCPUDecoder(w, f)
			s := DecoderScorer{Dec: dec, Tok: tok, MaxLen: maxLen}
			got, _, err := s.LogLikelihoods(item)
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range item {
				want, _, err := s.LogLikelihood(r)
				if err != nil {
					t.Fatal(err)
				}
				if got[i] != want {
					t.Errorf("%s, max length %d, choice %d: shared %v, whole %v", name, maxLen, i, got[i], want)
				}
			}
			if dec.Active() != 0 {
				t.Errorf("%s: %d sequences left open", name, dec.Active())
			}
		}
	}
}
