package eval

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// hiddenCounter hides a decoder's slot counts (and target scoring): PerplexityOn must then
// count a vanilla cache.
type hiddenCounter struct{ model.Decoder }

// logitsOnly hides a decoder's target scoring but keeps its slot counts: PerplexityOn scores
// the logits on the host.
type logitsOnly struct{ *model.CPUDecoder }

func (logitsOnly) DecodeScore() {} // not model.TargetScorer's signature: hides the CPU decoder's

// PerplexityOn (lockstep decoding, batches of several sizes) scores the same tokens as
// Perplexity and measures the same real compression rate, per layer and KV head, with a
// vanilla cache and with a DMC cache whose decisions merge a good share of the tokens.
func TestPerplexityOnMatchesPerplexity(t *testing.T) {
	w := testModel(t)
	merging := dmc.DefaultConfig()
	merging.DecisionOffset = -0.05 // random decision logits near 0: a good share of the tokens merge
	caches := []struct {
		name    string
		factory CacheFactory
	}{
		{"vanilla", VanillaCaches(w.Config)},
		{"dmc", DMCCaches(w.Config, merging)},
	}
	for _, c := range caches {
		for _, tc := range []struct {
			batch, seqLen, maxTokens int
		}{{1, 16, 0}, {2, 16, 0}, {5, 32, 0}, {3, 8, 20}} {
			opts := PPLOptions{SeqLen: tc.seqLen, MaxTokens: tc.maxTokens}
			want, err := Perplexity(context.Background(), w, c.factory, docsOf(testDocs...), opts)
			if err != nil {
				t.Fatal(err)
			}
			dec := model.NewCPUDecoder(w, func() (model.KVCache[float32], error) { return c.factory() })
			got, err := PerplexityOn(context.Background(), dec, w.Config, docsOf(testDocs...), opts, tc.batch)
			if err != nil {
				t.Fatal(err)
			}
			if got.Tokens != want.Tokens || got.Sequences != want.Sequences {
				t.Fatalf("%s %+v: scored %d tokens in %d sequences, Perplexity %d in %d", c.name, tc, got.Tokens, got.Sequences, want.Tokens, want.Sequences)
			}
			if math.Abs(got.NLL-want.NLL) > 1e-5 {
				t.Errorf("%s %+v: NLL %g, Perplexity %g", c.name, tc, got.NLL, want.NLL)
			}
			if got.CR != want.CR || got.Slots != want.Slots {
				t.Errorf("%s %+v: CR %g (%d slots), Perplexity %g (%d)", c.name, tc, got.CR, got.Slots, want.CR, want.Slots)
			}
			for l := range want.CRPerHead {
				for h := range want.CRPerHead[l] {
					if got.CRPerHead[l][h] != want.CRPerHead[l][h] {
						t.Errorf("%s %+v: layer %d head %d CR %g, Perplexity %g", c.name, tc, l, h, got.CRPerHead[l][h], want.CRPerHead[l][h])
					}
				}
			}
			if dec.Active() != 0 {
				t.Errorf("%s %+v: %d sequences left unreleased", c.name, tc, dec.Active())
			}
			// The host-side scoring of the logits gives the same numbers as DecodeScore.
			host := logitsOnly{model.NewCPUDecoder(w, func() (model.KVCache[float32], error) { return c.factory() })}
			if _, ok := any(host).(model.TargetScorer); ok {
				t.Fatal("logitsOnly still scores targets")
			}
			h, err := PerplexityOn(context.Background(), host, w.Config, docsOf(testDocs...), opts, tc.batch)
			if err != nil {
				t.Fatal(err)
			}
			if h.NLL != got.NLL || h.CR != got.CR {
				t.Errorf("%s %+v: host scoring NLL %g CR %g, DecodeScore %g %g", c.name, tc, h.NLL, h.CR, got.NLL, got.CR)
			}
		}
		if c.name == "dmc" {
			dec := model.NewCPUDecoder(w, func() (model.KVCache[float32], error) { return c.factory() })
			if r, _ := PerplexityOn(context.Background(), dec, w.Config, docsOf(testDocs...), PPLOptions{}, 4); r.CR <= 1.2 {
				t.Fatalf("the DMC case merged too little to test the slot counts: CR %g", r.CR)
			}
		}
	}
	// Without slot counts the cache counts as vanilla.
	dec := hiddenCounter{model.NewCPUDecoder(w, func() (model.KVCache[float32], error) { return caches[1].factory() })}
	r, err := PerplexityOn(context.Background(), dec, w.Config, docsOf(testDocs...), PPLOptions{}, 4)
	if err != nil || r.CR != 1 {
		t.Fatalf("decoder without slot counts: CR %v, %v", r, err)
	}
}

func TestPerplexityOnErrors(t *testing.T) {
	w := testModel(t)
	dec := model.NewCPUDecoder(w, func() (model.KVCache[float32], error) { return model.NewVanillaCache[float32](w.Config), nil })
	for _, tc := range []struct {
		name string
		doc  []int32
		want string
	}{
		{"out of vocabulary", []int32{1, 99}, "different tokenizer"},
		{"empty", []int32{1}, "no sequence"},
	} {
		_, err := PerplexityOn(context.Background(), dec, w.Config, docsOf(tc.doc), PPLOptions{}, 2)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := PerplexityOn(ctx, dec, w.Config, docsOf(testDocs...), PPLOptions{}, 1); err == nil {
		t.Error("a cancelled context did not stop the evaluation")
	}
}
