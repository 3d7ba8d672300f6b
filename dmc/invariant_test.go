package dmc_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/internal/dmctest"
	"github.com/dmc-project/dmc/model"
)

// loadStories260K returns the real stories260K weights in float64, or skips.
func loadStories260K(t testing.TB) *model.Params[float64] { return dmctest.Stories260K(t) }

// randomHalfParams is a small random model with rotate-half RoPE and G = 4.
func randomHalfParams(t testing.TB) *model.Params[float64] {
	t.Helper()
	mc := model.Config{Name: "random-half", Dim: 64, HiddenDim: 172, NLayers: 3, NHeads: 8, NKVHeads: 2,
		VocabSize: 256, MaxSeqLen: 256, NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf}
	p, err := model.RandomParams[float64](mc, 7)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func testTokens(n, vocab int, seed uint64) []int {
	rng := rand.New(rand.NewPCG(seed, 1))
	toks := make([]int, n)
	toks[0] = 1 // BOS
	for i := 1; i < n; i++ {
		toks[i] = rng.IntN(vocab)
	}
	return toks
}

// calibrateDecisions sets the decision rows so that a mix of merges and appends happens
// (dmctest.CalibrateDecisions).
func calibrateDecisions(t *testing.T, p *model.Params[float64], cfg dmc.Config, tokens []int) {
	t.Helper()
	if err := dmctest.CalibrateDecisions(p, cfg, tokens); err != nil {
		t.Fatal(err)
	}
}

// forcedPattern draws fixed decisions whose merge rate varies by head from 0.2 to 0.95, so
// that merge segments longer than any tested window occur.
func forcedPattern(nkv int, seed uint64) dmc.DecisionFunc {
	return func(layer, head, pos int) bool {
		rate := 0.2 + 0.75*float64((layer*nkv+head)%4)/3
		rng := rand.New(rand.NewPCG(seed, uint64(((layer*nkv+head)<<20)+pos)))
		return rng.Float64() < rate
	}
}

// TestParallelFormEqualsSequentialCache is the key invariant of dmc-spec.md §5: with hard
// decisions and no noise, the parallel training form (partial accumulations x̃ + additive mask)
// gives the same logits as the token-by-token inference update of the compressed cache.
func TestParallelFormEqualsSequentialCache(t *testing.T) {
	cases := []struct {
		name    string
		params  func(testing.TB) *model.Params[float64]
		window  int
		channel int
		n       int
		forced  bool
	}{
		{"stories260K/interleaved/W12", loadStories260K, 12, -1, 192, false},
		{"stories260K/interleaved/W0", loadStories260K, 0, -1, 192, false},
		{"random/half/W12", randomHalfParams, 12, -1, 160, false},
		{"random/half/W0", randomHalfParams, 0, -1, 160, false},
		{"random/half/W3/channel0", randomHalfParams, 3, 0, 160, false},
		{"stories260K/interleaved/W12/forced", loadStories260K, 12, -1, 192, true},
		{"stories260K/interleaved/W0/forced", loadStories260K, 0, -1, 192, true},
		{"random/half/W12/forced", randomHalfParams, 12, -1, 160, true},
		{"random/half/W0/forced", randomHalfParams, 0, -1, 160, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.params(t)
			c := p.Config
			cfg := dmc.DefaultConfig()
			cfg.Window, cfg.DecisionChannel = tc.window, tc.channel
			tokens := testTokens(tc.n, c.VocabSize, 3)
			opts := []dmc.CacheOption{dmc.WithDecisionRecord()}
			popt := dmc.ParallelOptions{Hard: true}
			if tc.forced {
				f := forcedPattern(c.NKVHeads, 11)
				opts = append(opts, dmc.WithForcedDecisions(f))
				popt.Force = f
			} else {
				calibrateDecisions(t, p, cfg, tokens)
			}
			cache, err := dmc.NewCompressedCache[float64](c, cfg, opts...)
			if err != nil {
				t.Fatal(err)
			}
			seq, err := model.New(p).Forward(cache, tokens, 0, true)
			if err != nil {
				t.Fatal(err)
			}
			par, err := dmc.ParallelForwardWith(p, cfg, tokens, popt)
			if err != nil {
				t.Fatal(err)
			}

			// Both paths must take the same decisions, none of them near the threshold.
			var merges, total, longest int
			minMargin := math.Inf(1)
			for li := 0; li < c.NLayers; li++ {
				for h := 0; h < c.NKVHeads; h++ {
					run := 0
					for pos, d := range cache.Decisions(li, h) {
						if want := par.Alpha[li][h*tc.n+pos] == 1; d.Merge != want {
							t.Fatalf("layer %d head %d pos %d: cache merge=%v, parallel form %v", li, h, pos, d.Merge, want)
						}
						if pos > 0 {
							minMargin = min(minMargin, math.Abs(d.Logit))
						}
						total++
						if d.Merge {
							merges++
							run++
						} else {
							run = 1
						}
						longest = max(longest, run)
					}
				}
			}
			frac := float64(merges) / float64(total)
			t.Logf("merges %d of %d (%.2f), longest segment %d, min |a| %.3g, CR %.3f", merges, total, frac, longest, minMargin, cache.CR())
			if frac < 0.3 || frac > 0.7 {
				t.Fatalf("merge fraction %.2f outside [0.3, 0.7]: the calibration did not produce a mix", frac)
			}
			if !tc.forced && minMargin < 1e-6 {
				t.Fatalf("a decision logit is %.3g from 0: decisions could flip on rounding", minMargin)
			}
			if tc.forced && tc.window > 0 && longest <= tc.window {
				t.Fatalf("longest merge segment %d does not exceed the window %d: the ring is not exercised", longest, tc.window)
			}
			if got, want := cache.CR(), dmc.AchievedCR(par.MeanHardAlpha()); math.Abs(got-want) > 1e-12 {
				t.Fatalf("cache CR %.15g != 1/(1-mean α) %.15g", got, want)
			}

			var maxDiff float64
			for i := range seq {
				maxDiff = max(maxDiff, math.Abs(seq[i]-par.Logits[i]))
			}
			t.Logf("max |logit diff| = %.3g", maxDiff)
			if maxDiff > 1e-9 || math.IsNaN(maxDiff) {
				t.Fatalf("parallel form and sequential cache differ: max |Δlogit| = %.3g > 1e-9", maxDiff)
			}

			// The compression must matter, or the comparison above proves little.
			van, err := model.New(p).Forward(model.NewVanillaCache[float64](c), tokens, 0, true)
			if err != nil {
				t.Fatal(err)
			}
			var vanDiff float64
			for i := range van {
				vanDiff = max(vanDiff, math.Abs(van[i]-seq[i]))
			}
			if vanDiff < 1e-3 {
				t.Fatalf("DMC logits are within %.3g of vanilla: merges have no visible effect", vanDiff)
			}
		})
	}
}

// TestWindowChangesOutput checks that W=12 and W=0 really differ on the same decisions, so the
// invariant test covers two distinct computations.
func TestWindowChangesOutput(t *testing.T) {
	p := randomHalfParams(t)
	cfg := dmc.DefaultConfig()
	tokens := testTokens(160, p.Config.VocabSize, 3)
	opt := dmc.ParallelOptions{Force: forcedPattern(p.Config.NKVHeads, 11)}
	a, err := dmc.ParallelForwardWith(p, cfg, tokens, opt)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Window = 0
	b, err := dmc.ParallelForwardWith(p, cfg, tokens, opt)
	if err != nil {
		t.Fatal(err)
	}
	var d float64
	for i := range a.Logits {
		d = max(d, math.Abs(a.Logits[i]-b.Logits[i]))
	}
	if d < 1e-6 {
		t.Fatalf("W=12 and W=0 give logits within %.3g", d)
	}
}

// TestZeroedRowsEqualVanilla: after stage 1 (decision rows zeroed) a = −5 everywhere, nothing
// merges, and both the hard and the noiseless relaxed parallel forms reduce to vanilla attention.
func TestZeroedRowsEqualVanilla(t *testing.T) {
	p := loadStories260K(t)
	cfg := dmc.DefaultConfig()
	if err := dmc.ZeroDecisionRows(p, cfg); err != nil {
		t.Fatal(err)
	}
	tokens := testTokens(96, p.Config.VocabSize, 5)
	van, err := model.New(p).Forward(model.NewVanillaCache[float64](p.Config), tokens, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, hard := range []bool{true, false} {
		got, err := dmc.ParallelForward(p, cfg, tokens, hard)
		if err != nil {
			t.Fatal(err)
		}
		var d float64
		for i := range van {
			d = max(d, math.Abs(van[i]-got[i]))
		}
		if d > 1e-9 {
			t.Fatalf("hard=%v: zeroed-row DMC differs from vanilla by %.3g", hard, d)
		}
	}
}

// TestFloat32CacheTracksFloat64 runs the inference cache in float32 against float64.
func TestFloat32CacheTracksFloat64(t *testing.T) {
	p := randomHalfParams(t)
	cfg := dmc.DefaultConfig()
	tokens := testTokens(128, p.Config.VocabSize, 9)
	calibrateDecisions(t, p, cfg, tokens)
	c64, _ := dmc.NewCompressedCache[float64](p.Config, cfg)
	want, err := model.New(p).Forward(c64, tokens, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	c32, _ := dmc.NewCompressedCache[float32](p.Config, cfg)
	got, err := model.New(model.Convert[float32](p)).Forward(c32, tokens, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	var d float64
	for i := range want {
		d = max(d, math.Abs(want[i]-float64(got[i])))
	}
	if d > 1e-4 || c32.TotalSlots() != c64.TotalSlots() {
		t.Fatalf("float32 cache: max |Δlogit| %.3g, slots %d vs %d", d, c32.TotalSlots(), c64.TotalSlots())
	}
}

// TestSoftApproachesHard: as τ → 0 without noise the relaxed parallel form tends to the hard one
// (every decision logit here is at least 0.02 away from 0, so σ(a/τ) is within e^-200 of 0 or 1).
func TestSoftApproachesHard(t *testing.T) {
	p := randomHalfParams(t)
	cfg := dmc.DefaultConfig()
	tokens := testTokens(128, p.Config.VocabSize, 3)
	calibrateDecisions(t, p, cfg, tokens)
	hard, err := dmc.ParallelForward(p, cfg, tokens, true)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Temperature = 1e-4
	soft, err := dmc.ParallelForward(p, cfg, tokens, false)
	if err != nil {
		t.Fatal(err)
	}
	var d float64
	for i := range hard {
		d = max(d, math.Abs(hard[i]-soft[i]))
	}
	if d > 1e-9 || math.IsNaN(d) {
		t.Fatalf("τ=1e-4 relaxed form differs from hard decisions by %.3g", d)
	}
	cfg.Temperature = 1 // a soft relaxation must actually change the output
	soft, _ = dmc.ParallelForward(p, cfg, tokens, false)
	d = 0
	for i := range hard {
		d = max(d, math.Abs(hard[i]-soft[i]))
	}
	if d < 1e-4 {
		t.Fatalf("τ=1 relaxed form is within %.3g of the hard form", d)
	}
}

// TestParallelNoiseDeterminism: the noisy relaxed forward is a function of the noise key.
func TestParallelNoiseDeterminism(t *testing.T) {
	p := randomHalfParams(t)
	cfg := dmc.DefaultConfig()
	tokens := testTokens(64, p.Config.VocabSize, 3)
	calibrateDecisions(t, p, cfg, tokens)
	run := func(step, mb uint64) *dmc.ParallelOutput {
		o, err := dmc.ParallelForwardWith(p, cfg, tokens, dmc.ParallelOptions{Noise: &dmc.NoiseKey{Seed: 1, Step: step, MicroBatch: mb}})
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	a, b := run(10, 0), run(10, 0)
	for i := range a.Logits {
		if a.Logits[i] != b.Logits[i] {
			t.Fatalf("same key, logit %d: %g vs %g", i, a.Logits[i], b.Logits[i])
		}
	}
	for _, o := range []*dmc.ParallelOutput{run(11, 0), run(10, 1)} {
		same := true
		for li := range o.Alpha {
			for i := range o.Alpha[li] {
				same = same && o.Alpha[li][i] == a.Alpha[li][i]
			}
		}
		if same {
			t.Fatal("a different step or micro-batch drew the same decisions")
		}
	}
	// Layer 0's decisions are σ((a + noise)/τ) with the key's Layer = 0 and index h·n + t.
	c := p.Config
	n, D := len(tokens), c.HeadDim()
	x, xn, k := make([]float64, n*c.Dim), make([]float64, n*c.Dim), make([]float64, n*c.KVDim())
	for i, tok := range tokens {
		copy(x[i*c.Dim:], p.Embed[tok*c.Dim:(tok+1)*c.Dim])
	}
	model.RMSNorm(xn, x, p.Layers[0].AttnNorm, c.NormEps)
	model.MatMulT(k, xn, p.Layers[0].Wk, n, c.Dim, c.KVDim())
	key := dmc.NoiseKey{Seed: 1, Step: 10}
	for h := 0; h < c.NKVHeads; h++ {
		for i := 1; i < n; i++ {
			logit := k[i*c.KVDim()+h*D+D-1] - cfg.DecisionOffset
			want := dmc.Sigmoid((logit + key.At(uint64(h*n+i))) / cfg.Temperature)
			if got := a.Alpha[0][h*n+i]; math.Abs(got-want) > 1e-12 {
				t.Fatalf("layer 0 head %d pos %d: α̃ %g, want %g", h, i, got, want)
			}
		}
	}
	if m := a.MeanHardAlpha(); m <= 0 || m >= 1 {
		t.Fatalf("mean hard alpha %g with noise", m)
	}
}
