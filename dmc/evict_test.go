package dmc

import (
	"math"
	"slices"
	"testing"

	"github.com/dmc-project/dmc/model"
)

func evictCfg() model.Config {
	return model.Config{Name: "e", Dim: 16, HiddenDim: 24, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 11, MaxSeqLen: 64,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf}
}

func feed(t *testing.T, c model.KVCache[float64], cfg model.Config, n int) {
	t.Helper()
	for pos := 0; pos < n; pos++ {
		feed1(c, cfg, pos)
	}
}

func TestEvictionPolicies(t *testing.T) {
	cfg := evictCfg()
	for _, tc := range []struct {
		ec   EvictConfig
		want []int
	}{
		{EvictConfig{Policy: PolicyWindow, Budget: 4}, []int{6, 7, 8, 9}},
		{EvictConfig{Policy: PolicyStreaming, Budget: 5, Sinks: 2}, []int{0, 1, 7, 8, 9}},
		{EvictConfig{Policy: PolicyStreaming, Budget: 6}, []int{0, 1, 2, 3, 8, 9}}, // 4 sinks by default
	} {
		c, err := NewEvictingCache[float64](cfg, tc.ec)
		if err != nil {
			t.Fatal(err)
		}
		feed(t, c, cfg, 10)
		for l := 0; l < cfg.NLayers; l++ {
			for h := 0; h < cfg.NKVHeads; h++ {
				if got := c.Positions(l, h); !slices.Equal(got, tc.want) {
					t.Errorf("%+v: layer %d head %d keeps %v, want %v", tc.ec, l, h, got, tc.want)
				}
				if c.Tokens(l, h) != 10 || c.NumSlots(l, h) != len(tc.want) {
					t.Errorf("%+v: %d tokens in %d slots", tc.ec, c.Tokens(l, h), c.NumSlots(l, h))
				}
			}
		}
		// Values travel with their slots.
		_, vals, n := c.Slots(0, 1)
		D := cfg.HeadDim()
		for j := 0; j < n; j++ {
			if vals[j*D] != float64(tc.want[j]) {
				t.Fatalf("%+v: slot %d holds the value of token %v, want %d", tc.ec, j, vals[j*D], tc.want[j])
			}
		}
	}
}

// H2O evicts the lowest accumulated attention outside its recent window; TOVA the lowest last
// attention anywhere; both keep scores that are the model's attention probabilities.
func TestScoreBasedEviction(t *testing.T) {
	cfg := evictCfg()
	for _, tc := range []struct {
		ec     EvictConfig
		scores []float64
		evict  int // the position evicted by the next token
	}{
		{EvictConfig{Policy: PolicyH2O, Budget: 5, Recent: 2}, []float64{0.5, 0.1, 0.3, 0.01, 0.02}, 1}, // 3 and 4 are recent
		{EvictConfig{Policy: PolicyTOVA, Budget: 5}, []float64{0.5, 0.1, 0.3, 0.01, 0.02}, 3},
	} {
		c, err := NewEvictingCache[float64](cfg, tc.ec)
		if err != nil {
			t.Fatal(err)
		}
		feed(t, c, cfg, 5)
		// The scores after a token are attention probabilities: TOVA's sum to 1 per head; H2O's
		// accumulate one distribution per token, so they sum to the tokens seen.
		var sum float64
		for _, s := range c.score[0] {
			sum += s
		}
		want := 1.0
		if tc.ec.Policy == PolicyH2O {
			want = 5
		}
		if math.Abs(sum-want) > 1e-9 {
			t.Fatalf("%s scores sum to %v, want %v", tc.ec.Policy, sum, want)
		}
		c.score[0] = append([]float64(nil), tc.scores...)
		q := make([]float64, cfg.NHeads*cfg.HeadDim())
		k := make([]float64, cfg.NKVHeads*cfg.HeadDim())
		c.Put(0, 5, q, k, k)
		got := c.Positions(0, 0)
		if slices.Contains(got, tc.evict) || len(got) != 5 || got[4] != 5 {
			t.Errorf("%s kept %v after the 6th token; want position %d evicted", tc.ec.Policy, got, tc.evict)
		}
	}
}

// Below its budget an evicting cache holds what the vanilla cache holds: the same forward pass.
func TestEvictingCacheUnderBudgetIsVanilla(t *testing.T) {
	cfg := evictCfg()
	p, err := model.RandomParams[float64](cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	m := model.New(p)
	tokens := []int{1, 5, 3, 9, 2, 7, 4, 4, 8, 1}
	ref, err := m.Forward(model.NewVanillaCache[float64](cfg), tokens, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, pol := range []string{PolicyWindow, PolicyStreaming, PolicyH2O, PolicyTOVA} {
		c, err := NewEvictingCache[float64](cfg, EvictConfig{Policy: pol, Budget: 16})
		if err != nil {
			t.Fatal(err)
		}
		got, err := m.Forward(c, tokens, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		for i := range ref {
			if math.Abs(got[i]-ref[i]) > 1e-12 {
				t.Fatalf("%s under budget: logit %d = %v, vanilla %v", pol, i, got[i], ref[i])
			}
		}
	}
}

func TestEvictConfigValidate(t *testing.T) {
	for _, ec := range []EvictConfig{{Policy: "lru", Budget: 4}, {Policy: PolicyWindow}, {Policy: PolicyStreaming, Budget: 4},
		{Policy: PolicyH2O, Budget: 4, Recent: 4}} {
		if err := ec.Validate(); err == nil {
			t.Errorf("%+v was accepted", ec)
		}
	}
}

// A proportional budget (Ratio) keeps ⌈t/Ratio⌉ slots after t tokens, never fewer than the
// floor, whatever the policy evicts; SlotsFor and RealCR predict the counts exactly.
func TestEvictionRatioBudget(t *testing.T) {
	cfg := evictCfg()
	for _, tc := range []struct {
		ec        EvictConfig
		n         int
		want      int   // slots after n tokens
		positions []int // window: the newest
	}{
		{EvictConfig{Policy: PolicyWindow, Ratio: 2}, 10, 5, []int{5, 6, 7, 8, 9}},
		{EvictConfig{Policy: PolicyWindow, Ratio: 4}, 9, 3, []int{6, 7, 8}},
		{EvictConfig{Policy: PolicyWindow, Ratio: 4}, 1, 1, []int{0}},
		{EvictConfig{Policy: PolicyStreaming, Ratio: 4, Sinks: 2}, 9, 3, []int{0, 1, 8}}, // floor: the sinks + 1
		{EvictConfig{Policy: PolicyStreaming, Ratio: 8, Sinks: 2}, 9, 3, []int{0, 1, 8}},
		{EvictConfig{Policy: PolicyH2O, Ratio: 3}, 12, 4, nil},
		{EvictConfig{Policy: PolicyTOVA, Ratio: 2.5}, 11, 5, nil},
	} {
		ec := tc.ec
		if err := ec.Validate(); err != nil {
			t.Fatalf("%+v: %v", tc.ec, err)
		}
		c, err := NewEvictingCache[float64](cfg, ec)
		if err != nil {
			t.Fatal(err)
		}
		for pos := 1; pos <= tc.n; pos++ {
			feed1(c, cfg, pos-1)
			if got, want := c.NumSlots(1, 1), ec.SlotsFor(pos); got != want {
				t.Fatalf("%+v: %d slots after %d tokens, SlotsFor says %d", tc.ec, got, pos, want)
			}
		}
		if got := c.NumSlots(0, 0); got != tc.want {
			t.Errorf("%+v: %d slots after %d tokens, want %d", tc.ec, got, tc.n, tc.want)
		}
		if tc.positions != nil && !slices.Equal(c.Positions(0, 1), tc.positions) {
			t.Errorf("%+v keeps %v, want %v", tc.ec, c.Positions(0, 1), tc.positions)
		}
		if got, want := ec.RealCR([]int{tc.n}), float64(tc.n)/float64(tc.want); got != want {
			t.Errorf("%+v: RealCR %v, want %v", tc.ec, got, want)
		}
	}
	for _, ec := range []EvictConfig{{Policy: PolicyWindow, Ratio: 0.5}, {Policy: PolicyTOVA, Ratio: math.Inf(1)},
		{Policy: PolicyH2O, Ratio: math.NaN()}} {
		if err := ec.Validate(); err == nil {
			t.Errorf("%+v was accepted", ec)
		}
	}
}

// feed1 puts the token at pos into every layer of c (the vectors of feed).
func feed1(c model.KVCache[float64], cfg model.Config, pos int) {
	D := cfg.HeadDim()
	q := make([]float64, cfg.NHeads*D)
	k := make([]float64, cfg.NKVHeads*D)
	v := make([]float64, cfg.NKVHeads*D)
	for i := range q {
		q[i] = math.Sin(float64(pos*7 + i))
	}
	for i := range k {
		k[i], v[i] = math.Cos(float64(pos*3+i)), float64(pos)
	}
	for l := 0; l < cfg.NLayers; l++ {
		c.Put(l, pos, q, k, v)
	}
}

// RatioFor solves the ratio whose real CR on given lengths is the target (or just above it),
// and says when the budget's floor cannot reach it.
func TestEvictionRatioFor(t *testing.T) {
	lengths := []int{7, 12, 30, 31, 64, 5, 100}
	for _, tc := range []struct {
		ec     EvictConfig
		target float64
		ok     bool
	}{
		{EvictConfig{Policy: PolicyWindow}, 2, true},
		{EvictConfig{Policy: PolicyWindow}, 4.2175, true},
		{EvictConfig{Policy: PolicyTOVA}, 1, true},
		{EvictConfig{Policy: PolicyStreaming}, 4, true},
		{EvictConfig{Policy: PolicyStreaming}, 20, false}, // 5 slots of the floor per sequence at least
	} {
		ec, ok, err := tc.ec.RatioFor(lengths, tc.target)
		if err != nil {
			t.Fatal(err)
		}
		if ok != tc.ok {
			t.Errorf("%+v at %g: ok %v", tc.ec, tc.target, ok)
		}
		got := ec.RealCR(lengths)
		if ok && (got < tc.target-1e-12 || got > tc.target*1.1) {
			t.Errorf("%+v at %g: ratio %g gives real CR %g", tc.ec, tc.target, ec.Ratio, got)
		}
		if !ok && got >= tc.target {
			t.Errorf("%+v at %g: not ok, yet real CR %g", tc.ec, tc.target, got)
		}
	}
	if _, _, err := (EvictConfig{Policy: PolicyWindow}).RatioFor(lengths, 0.5); err == nil {
		t.Error("a target below 1 was accepted")
	}
}
