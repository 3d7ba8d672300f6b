package tasks

import (
	"math"
	"slices"
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
	w, tok := stories260K(t)
	dc := testDMCConfig()
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

// The batched scorer (contexts prefilled together, continuations decoded in lockstep, as the
// CUDA engine scores) gives DecoderScorer's log-likelihoods and greedy checks, for batches
// that split items, and releases every sequence.
func TestBatchScorerEqualsPerRequest(t *testing.T) {
	w, tok := stories260K(t)
	dc := testDMCConfig()
	ctx := "Once upon a time, there was a little girl named Lily. She loved to play"
	rs := []Request{{Context: ctx, Continuation: " outside."}, {Context: ctx, Continuation: " with her toys and her dog."},
		{Context: "Tom had a", Continuation: " big red ball"}, {Context: "The sun was", Continuation: " hot"},
		{Context: "One day", Continuation: ", Lily went to the park with her mom."}}
	for name, f := range map[string]func() (model.KVCache[float32], error){
		"vanilla": func() (model.KVCache[float32], error) { return model.NewVanillaCache[float32](w.Config), nil },
		"dmc":     func() (model.KVCache[float32], error) { return dmc.NewCompressedCache[float32](w.Config, dc) },
	} {
		for _, B := range []int{1, 2, 8} {
			dec := model.NewCPUDecoder(w, f)
			bs := BatchScorer{DecoderScorer: DecoderScorer{Dec: dec, Tok: tok, MaxLen: 512}, Batch: B, Slots: &SlotTally{}}
			var seen []int
			lls, gs, err := bs.ScoreRequests(rs, func(done int) { seen = append(seen, done) })
			if err != nil {
				t.Fatal(err)
			}
			ref := DecoderScorer{Dec: model.NewCPUDecoder(w, f), Tok: tok, MaxLen: 512, Greedy: true}
			for i, r := range rs {
				ll, g, err := ref.LogLikelihood(r)
				if err != nil {
					t.Fatal(err)
				}
				if math.Abs(lls[i]-ll) > 1e-9*math.Abs(ll) || gs[i] != g {
					t.Errorf("%s batch %d request %d: batched (%v, %t), per request (%v, %t)", name, B, i, lls[i], gs[i], ll, g)
				}
			}
			// The tally's real CR is that of each whole sequence (less its scored last token)
			// prefilled into a fresh cache.
			var want SlotTally
			for _, r := range rs {
				toks, _, err := bs.tokens(r)
				if err != nil {
					t.Fatal(err)
				}
				one := model.NewCPUDecoder(w, f)
				ids, _, _, err := one.Prefill([][]int{toks[:len(toks)-1]}, false)
				if err != nil {
					t.Fatal(err)
				}
				rows, err := one.RowSlots(ids[0])
				if err != nil {
					t.Fatal(err)
				}
				want.Add(len(toks)-1, rows)
			}
			if got := bs.Slots.CR(); got != want.CR() || (name == "vanilla" && got != 1) || (name == "dmc" && got <= 1) {
				t.Errorf("%s batch %d: tallied real CR %v, want %v", name, B, got, want.CR())
			}
			if dec.Active() != 0 || seen[len(seen)-1] != len(rs) {
				t.Errorf("%s batch %d: %d sequences left, progress %v", name, B, dec.Active(), seen)
			}
		}
	}
}

// A policy's cache, heard through the CPU decoder's Scored hook, holds what SlotsFor and
// CachedLengths predict (the real CR a ratio is solved from), and the report carries the
// tallied CR as cr,none.
func TestPolicySlotsAndReportedCR(t *testing.T) {
	w, tok := stories260K(t)
	ec := dmc.EvictConfig{Policy: dmc.PolicyWindow, Ratio: 3}
	if err := ec.Validate(); err != nil {
		t.Fatal(err)
	}
	dec := model.NewCPUDecoder(w, func() (model.KVCache[float32], error) { return dmc.NewEvictingCache[float32](w.Config, ec) })
	var tally SlotTally
	var heard []int
	dec.Scored = func(c model.KVCache[float32], n int) {
		heard = append(heard, n)
		rows := model.RowSlotsOf(w.Config, c)
		for i, k := range rows {
			if k != ec.SlotsFor(n) {
				t.Errorf("row %d holds %d slots after %d tokens; SlotsFor says %d", i, k, n, ec.SlotsFor(n))
			}
		}
		tally.Add(n, rows)
	}
	s := DecoderScorer{Dec: dec, Tok: tok, MaxLen: 512}
	r := Request{Context: "Once upon a time, there was a little girl named Lily.", Continuation: " She loved to play outside."}
	want, err := s.CachedLengths([]Item{{Requests: []Request{r}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.LogLikelihood(r); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(heard, want) || len(want) != 1 {
		t.Fatalf("heard sequences of %v tokens, CachedLengths says %v", heard, want)
	}
	if got := tally.CR(); math.Abs(got-ec.RealCR(want)) > 1e-12 || got <= 1 {
		t.Errorf("tallied real CR %v, RealCR %v", got, ec.RealCR(want))
	}
	rep := NewReport([]*Result{{Task: "copa", N: 1, CR: tally.CR()}}, nil, nil)
	if cr, _ := rep.Results["copa"]["cr,none"].(float64); math.Abs(cr-float64(want[0])/float64(ec.SlotsFor(want[0]))) > 1e-12 {
		t.Errorf("cr,none = %v", rep.Results["copa"]["cr,none"])
	}
}

// The CPU decoder's Scored hook hears every scored sequence, on the shared-context, the
// per-request and the greedy paths: the DMC cache's real CR on a task, as the engine's
// SlotTally measures it.
func TestCPUScoredHookTalliesRealCR(t *testing.T) {
	w, tok := stories260K(t)
	dc := testDMCConfig()
	f := func() (model.KVCache[float32], error) { return dmc.NewCompressedCache[float32](w.Config, dc) }
	ctx := "Once upon a time, there was a little girl named Lily. She loved to play"
	rs := []Request{{Context: ctx, Continuation: " outside."}, {Context: ctx, Continuation: " with her toys and her dog."},
		{Context: ctx, Continuation: "!"}}
	var want SlotTally
	ref := BatchScorer{DecoderScorer: DecoderScorer{Dec: model.NewCPUDecoder(w, f), Tok: tok, MaxLen: 512}, Batch: 8, Slots: &want}
	if _, _, err := ref.ScoreRequests(rs, nil); err != nil {
		t.Fatal(err)
	}
	for _, greedy := range []bool{false, true} {
		dec := model.NewCPUDecoder(w, f)
		var got SlotTally
		dec.Scored = func(c model.KVCache[float32], n int) { got.Add(n, model.RowSlotsOf(w.Config, c)) }
		s := DecoderScorer{Dec: dec, Tok: tok, MaxLen: 512, Greedy: greedy}
		if _, _, err := s.LogLikelihoods(rs); err != nil {
			t.Fatal(err)
		}
		if got.CR() != want.CR() || got.CR() <= 1 {
			t.Errorf("greedy %v: hooked real CR %v, batch scorer's %v", greedy, got.CR(), want.CR())
		}
	}
}

// stories260K is the test model in float32 and its tokenizer (the test skips without them).
func stories260K(t *testing.T) (*model.Weights, tokenizer.Tokenizer) {
	t.Helper()
	w := model.Convert[float32](dmctest.Stories260K(t))
	tok, err := tokenizer.Load(dmctest.AssetPath("tinyllamas-stories260K/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return w, tok
}

// testDMCConfig merges often on stories260K: decisions from channel 0, offset 2.
func testDMCConfig() dmc.Config {
	dc := dmc.DefaultConfig()
	dc.DecisionChannel, dc.DecisionOffset = 0, 2
	return dc
}
