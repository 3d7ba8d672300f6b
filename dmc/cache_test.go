package dmc

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// token is one (q, k, v) input of a single-head cache test.
type token struct{ q, k, v []float64 }

// omegaQ returns the q[ch] value whose importance is w (ignoring ε).
func omegaQ(w float64) float64 { return math.Log(w/(1-w)) - 5 }

func randomTokens(rng *rand.Rand, n int, mc model.Config, ch int) []token {
	D := mc.HeadDim()
	out := make([]token, n)
	for i := range out {
		tk := token{make([]float64, mc.QDim()), make([]float64, mc.KVDim()), make([]float64, mc.KVDim())}
		for j := range tk.q {
			tk.q[j] = rng.NormFloat64()
		}
		for j := range tk.k {
			tk.k[j], tk.v[j] = rng.NormFloat64(), rng.NormFloat64()
		}
		for g := 0; g < mc.NHeads; g++ {
			tk.q[g*D+ch] = omegaQ(0.05 + 0.9*rng.Float64()) // importances spread over (0.05, 0.95)
		}
		out[i] = tk
	}
	return out
}

func clonef(s []float64) []float64 { return append([]float64(nil), s...) }

// TestCacheWindowRing checks the sequential update of §4 against a brute-force evaluation of
// its meaning: each slot is the ω-weighted mean of the last min(n, W) tokens of its merge
// segment, and its key is rotated at the position of the newest of them.
func TestCacheWindowRing(t *testing.T) {
	//             pos: 0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
	pattern := []bool{false, true, true, true, true, true, false, true, false, false, true, true, true, true, true, true}
	for _, layout := range []model.RoPELayout{model.RoPEInterleaved, model.RoPEHalf} {
		for _, W := range []int{0, 1, 3, 4} {
			mc := tinyConfig(6, 1, 1, 1, layout) // D = 6, decision channel 5
			cfg := DefaultConfig()
			cfg.Window = W
			rng := rand.New(rand.NewPCG(1, uint64(W)))
			toks := randomTokens(rng, len(pattern), mc, 5)
			c, err := NewCompressedCache[float64](mc, cfg, WithForcedDecisions(func(_, _, pos int) bool { return pattern[pos] }), WithDecisionRecord())
			if err != nil {
				t.Fatal(err)
			}
			rope := model.NewRoPE(mc)
			var ks, vs [][]float64 // pre-RoPE k, v with the channel zeroed
			var ws []float64
			segStart := 0
			for pos, tk := range toks {
				q, k, v := clonef(tk.q), clonef(tk.k), clonef(tk.v)
				c.Put(0, pos, q, k, v)
				kz := clonef(tk.k)
				kz[5] = 0
				ks, vs = append(ks, kz), append(vs, clonef(tk.v))
				ws = append(ws, c.Decisions(0, 0)[pos].Importance)
				if !pattern[pos] {
					segStart = pos
				}
				lo := segStart
				if W > 0 {
					lo = max(lo, pos-W+1)
				}
				wantK, wantV := make([]float64, 6), make([]float64, 6)
				var z float64
				for j := lo; j <= pos; j++ {
					for d := range 6 {
						wantK[d] += ws[j] * ks[j][d]
						wantV[d] += ws[j] * vs[j][d]
					}
					z += ws[j]
				}
				for d := range 6 {
					wantK[d] /= z
					wantV[d] /= z
				}
				model.Rotate(rope, wantK, pos)
				keys, values, n := c.Slots(0, 0)
				if n != segCount(pattern[:pos+1]) {
					t.Fatalf("%s W=%d pos %d: %d slots, want %d", layout, W, pos, n, segCount(pattern[:pos+1]))
				}
				last := (n - 1) * 6
				for d := range 6 {
					if math.Abs(keys[last+d]-wantK[d]) > 1e-12 || math.Abs(values[last+d]-wantV[d]) > 1e-12 {
						t.Fatalf("%s W=%d pos %d channel %d: slot (%g, %g), want (%g, %g)", layout, W, pos, d, keys[last+d], values[last+d], wantK[d], wantV[d])
					}
				}
			}
		}
	}
}

func segCount(pattern []bool) int {
	n := 0
	for i, m := range pattern {
		if !m || i == 0 {
			n++
		}
	}
	return n
}

// TestCacheLearnedDecision: α = 1[k[ch] − 5 > 0], and the first token always appends.
func TestCacheLearnedDecision(t *testing.T) {
	mc := tinyConfig(4, 1, 1, 1, model.RoPEInterleaved)
	c, err := NewCompressedCache[float64](mc, DefaultConfig(), WithDecisionRecord())
	if err != nil {
		t.Fatal(err)
	}
	kch := []float64{9, 5.5, 4.5, 5, 5.0001, 100, -3}
	want := []bool{false, true, false, false, true, true, false}
	for round := 0; round < 2; round++ { // the second round checks Reset
		for pos, x := range kch {
			c.Put(0, pos, []float64{1, 2, 3, 0}, []float64{1, 1, 1, x}, []float64{1, 2, 3, 4})
		}
		slots := 0
		for pos, d := range c.Decisions(0, 0) {
			if d.Merge != want[pos] || d.Pos != pos || d.Logit != kch[pos]-5 {
				t.Fatalf("round %d pos %d: decision %+v, want merge=%v logit %g", round, pos, d, want[pos], kch[pos]-5)
			}
			if !d.Merge {
				slots++
			}
		}
		if c.NumSlots(0, 0) != slots || c.Tokens(0, 0) != len(kch) {
			t.Fatalf("round %d: %d slots, %d tokens; want %d, %d", round, c.NumSlots(0, 0), c.Tokens(0, 0), slots, len(kch))
		}
		if got, want := c.CR(), float64(len(kch))/float64(slots); got != want {
			t.Fatalf("CR %g, want %g", got, want)
		}
		c.Reset()
		if c.CR() != 1 || c.TotalSlots() != 0 || c.Tokens(0, 0) != 0 || len(c.Decisions(0, 0)) != 0 {
			t.Fatalf("after Reset: CR %g, slots %d, tokens %d", c.CR(), c.TotalSlots(), c.Tokens(0, 0))
		}
	}
}

// TestCacheZeroChannelRule: for both RoPE layouts and both channel choices, the raw value of the
// decision channel reaches attention only through α: it is zeroed in q (every head) and in k
// before rotation, so it cannot leak into its RoPE partner.
func TestCacheZeroChannelRule(t *testing.T) {
	for _, layout := range []model.RoPELayout{model.RoPEInterleaved, model.RoPEHalf} {
		for _, channel := range []int{-1, 0} {
			mc := tinyConfig(16, 2, 1, 1, layout) // D = 8, G = 2
			cfg := DefaultConfig()
			cfg.DecisionChannel = channel
			ch := cfg.Channel(8)
			rope := model.NewRoPE(mc)
			partner := rope.Partner(ch)
			wantPartner := map[model.RoPELayout]map[int]int{
				model.RoPEInterleaved: {7: 6, 0: 1}, model.RoPEHalf: {7: 3, 0: 4},
			}[layout][ch]
			if partner != wantPartner {
				t.Fatalf("%s: partner of %d is %d, want %d", layout, ch, partner, wantPartner)
			}
			const pos = 7
			keyFor := func(kch float64) ([]float64, []float64) {
				c, _ := NewCompressedCache[float64](mc, cfg)
				q := []float64{1, 2, 3, 4, 5, 6, 7, 8, -1, -2, -3, -4, -5, -6, -7, -8}
				k := []float64{.1, .2, .3, .4, .5, .6, .7, .8}
				k[ch] = kch
				c.Put(0, pos, q, k, []float64{1, 1, 1, 1, 1, 1, 1, 1})
				keys, _, _ := c.Slots(0, 0)
				return clonef(keys), q
			}
			a, q := keyFor(3)
			b, _ := keyFor(-40)
			for g := 0; g < 2; g++ {
				if q[g*8+ch] != 0 || q[g*8+partner] == 0 {
					t.Fatalf("%s ch %d: q head %d = %v, want channel %d zeroed and its partner kept", layout, ch, g, q[g*8:g*8+8], ch)
				}
			}
			want := []float64{.1, .2, .3, .4, .5, .6, .7, .8}
			leaky := clonef(want)
			leaky[ch] = 3
			want[ch] = 0
			model.Rotate(rope, want, pos)
			model.Rotate(rope, leaky, pos)
			for d := range a {
				if a[d] != b[d] || math.Abs(a[d]-want[d]) > 1e-15 {
					t.Fatalf("%s ch %d: key slot %v (other k[ch]: %v), want %v", layout, ch, a, b, want)
				}
			}
			if math.Abs(leaky[partner]-want[partner]) < 1e-3 {
				t.Fatalf("%s ch %d: test cannot tell a leak from none", layout, ch)
			}
		}
	}
}

// TestCacheCRAccounting checks tokens, slots and compression rates per head, per layer and
// overall, with forced per-head rates.
func TestCacheCRAccounting(t *testing.T) {
	mc := tinyConfig(8, 2, 2, 2, model.RoPEHalf) // D = 4, 2 layers × 2 KV heads
	rates := [][]float64{{1, 2}, {4, 2.5}}
	c, err := NewCompressedCache[float32](mc, DefaultConfig(), WithForcedDecisions(ForcedCR(func(l, h int) float64 { return rates[l][h] })))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Forced() {
		t.Fatal("Forced() = false for a forced cache")
	}
	const N = 40
	rng := rand.New(rand.NewPCG(3, 3))
	for pos := 0; pos < N; pos++ {
		for l := 0; l < 2; l++ {
			q, k, v := make([]float32, 8), make([]float32, 8), make([]float32, 8)
			for i := range q {
				q[i], k[i], v[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64()), float32(rng.NormFloat64())
			}
			c.Put(l, pos, q, k, v)
		}
	}
	wantSlots := [][]int{{40, 20}, {10, 16}} // ⌈40/cr⌉
	for l := 0; l < 2; l++ {
		for h := 0; h < 2; h++ {
			keys, values, n := c.Slots(l, h)
			if n != wantSlots[l][h] || c.NumSlots(l, h) != n || len(keys) != n*4 || len(values) != n*4 || c.Tokens(l, h) != N {
				t.Fatalf("layer %d head %d: %d slots (%d key values), %d tokens; want %d slots, %d tokens", l, h, n, len(keys), c.Tokens(l, h), wantSlots[l][h], N)
			}
			if got, want := c.HeadCR(l, h), float64(N)/float64(wantSlots[l][h]); got != want {
				t.Fatalf("HeadCR(%d,%d) = %g, want %g", l, h, got, want)
			}
		}
	}
	if got, want := c.LayerCR(0), 80.0/60; got != want {
		t.Fatalf("LayerCR(0) = %g, want %g", got, want)
	}
	if got, want := c.LayerCR(1), 80.0/26; got != want {
		t.Fatalf("LayerCR(1) = %g, want %g", got, want)
	}
	if got, want := c.CR(), 160.0/86; got != want || c.TotalSlots() != 86 {
		t.Fatalf("CR() = %g (slots %d), want %g (86)", got, c.TotalSlots(), want)
	}
}

func TestForcedCR(t *testing.T) {
	for _, cr := range []float64{0.5, 1, 2, 2.5, 3, 4, 7.3} {
		f := ForcedCR(func(int, int) float64 { return cr })
		for _, n := range []int{1, 10, 37, 100} {
			slots := 0
			for pos := 0; pos < n; pos++ {
				if !f(0, 0, pos) {
					slots++
				}
			}
			if want := int(math.Floor(float64(n-1)/max(cr, 1))) + 1; slots != want {
				t.Fatalf("cr %g, %d tokens: %d slots, want %d", cr, n, slots, want)
			}
		}
	}
}

func TestNewCompressedCacheErrors(t *testing.T) {
	mc := tinyConfig(8, 2, 2, 1, model.RoPEHalf)
	bad := DefaultConfig()
	bad.DecisionChannel = 4 // D = 4
	if _, err := NewCompressedCache[float32](mc, bad); err == nil {
		t.Fatal("want an error for a channel outside the head")
	}
	bad = DefaultConfig()
	bad.Window = -3
	if _, err := NewCompressedCache[float32](mc, bad); err == nil {
		t.Fatal("want an error for a negative window")
	}
	mc.NHeads = 3
	if _, err := NewCompressedCache[float32](mc, DefaultConfig()); err == nil {
		t.Fatal("want an error for an invalid model config")
	}
}

func TestStats(t *testing.T) {
	mc := tinyConfig(8, 2, 2, 2, model.RoPEHalf)
	rates := [][]float64{{1, 2}, {4, 3}}
	c, _ := NewCompressedCache[float64](mc, DefaultConfig(), WithForcedDecisions(ForcedCR(func(l, h int) float64 { return rates[l][h] })))
	var total Stats
	for seq, n := range []int{12, 30} {
		c.Reset()
		for pos := 0; pos < n; pos++ {
			for l := 0; l < 2; l++ {
				c.Put(l, pos, make([]float64, 8), make([]float64, 8), make([]float64, 8))
			}
		}
		s := c.Stats()
		if s.CR() != c.CR() || s.LayerCR(1) != c.LayerCR(1) || s.HeadCR(1, 0) != c.HeadCR(1, 0) {
			t.Fatalf("sequence %d: stats %+v disagree with the cache", seq, s)
		}
		total.Add(s)
	}
	// Slots ⌈n/cr⌉ for n = 12 and 30: cr 1 → 12+30, cr 2 → 6+15, cr 4 → 3+8, cr 3 → 4+10.
	want := [][]int{{42, 21}, {11, 14}}
	for l := range want {
		for h := range want[l] {
			if total.Slots[l][h] != want[l][h] || total.Tokens[l][h] != 42 {
				t.Fatalf("accumulated stats %+v, want slots %v and 42 tokens per head", total, want)
			}
		}
	}
	if got, w := total.CR(), 168.0/88; got != w {
		t.Fatalf("accumulated CR %g, want %g", got, w)
	}
	if got, w := total.LayerCR(1), 84.0/25; got != w {
		t.Fatalf("accumulated layer-1 CR %g, want %g", got, w)
	}
}
