package graph

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/internal/dmctest"
	"github.com/dmc-project/dmc/model"
)

// loadStories260K returns the real stories260K weights in float64, or skips.
func loadStories260K(t testing.TB) *model.Params[float64] { return dmctest.Stories260K(t) }

func randTokens(rng *rand.Rand, n, vocab int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = rng.IntN(vocab)
	}
	s[0] = 1
	return s
}

// makeBatch packs sequences into a Batch whose targets are the next tokens (last one ignored).
func makeBatch(seqs [][]int) Batch {
	b := Batch{BatchSize: len(seqs), SeqLen: len(seqs[0])}
	for _, s := range seqs {
		b.Inputs = append(b.Inputs, s...)
		for t := range s {
			if t+1 < len(s) {
				b.Targets = append(b.Targets, s[t+1])
			} else {
				b.Targets = append(b.Targets, -1)
			}
		}
	}
	return b
}

// calibrateDecisions sets the decision rows so that a mix of merges and appends happens
// (dmctest.CalibrateDecisions).
func calibrateDecisions(t *testing.T, p *model.Params[float64], cfg dmc.Config, seq []int) {
	t.Helper()
	if err := dmctest.CalibrateDecisions(p, cfg, seq); err != nil {
		t.Fatal(err)
	}
}

// TestHardGraphEqualsSequentialDecode is the invariant of dmc-spec.md §5 on the real
// stories260K weights: the graph's parallel form with hard decisions gives the logits of
// token-by-token decoding with the compressed cache.
func TestHardGraphEqualsSequentialDecode(t *testing.T) {
	base := loadStories260K(t)
	rng := rand.New(rand.NewPCG(3, 3))
	const B, T = 2, 64
	seqs := [][]int{randTokens(rng, T, base.Config.VocabSize), randTokens(rng, T, base.Config.VocabSize)}
	for _, W := range []int{12, 0} {
		cfg := dmc.DefaultConfig()
		cfg.Window = W
		p := model.Convert[float64](base)
		calibrateDecisions(t, p, cfg, seqs[0])
		g, err := New64(p, cfg, B, T, Options[float64]{KeepLogits: true})
		if err != nil {
			t.Fatal(err)
		}
		l, err := g.Forward(makeBatch(seqs), StepContext{DMC: true, ZeroOut: 1, Hard: true})
		if err != nil {
			t.Fatal(err)
		}
		got := g.Logits()
		V := p.Config.VocabSize
		merges, total := 0, 0
		for b, s := range seqs {
			cache, err := dmc.NewCompressedCache[float64](p.Config, cfg, dmc.WithDecisionRecord())
			if err != nil {
				t.Fatal(err)
			}
			want, err := model.New(p).Forward(cache, s, 0, true)
			if err != nil {
				t.Fatal(err)
			}
			var worst float64
			for i, w := range want {
				worst = max(worst, math.Abs(got[b*T*V+i]-w))
			}
			if !(worst <= 1e-9) {
				t.Errorf("W=%d sequence %d: graph logits differ from sequential decode by %.3g", W, b, worst)
			}
			for li := 0; li < p.Config.NLayers; li++ {
				for h := 0; h < p.Config.NKVHeads; h++ {
					for _, d := range cache.Decisions(li, h) {
						total++
						if d.Merge {
							merges++
						}
					}
				}
			}
			t.Logf("W=%d sequence %d: max |Δlogit| = %.2g, cache CR %.2f", W, b, worst, cache.CR())
		}
		frac := float64(merges) / float64(total)
		if frac < 0.15 || frac > 0.85 {
			t.Errorf("W=%d: merge fraction %.2f; the test needs both merges and appends", W, frac)
		}
		if math.Abs(l.MeanAlpha-frac) > 1e-12 {
			t.Errorf("W=%d: graph mean α %.6f, cache merge fraction %.6f", W, l.MeanAlpha, frac)
		}
	}
}

// TestVanillaGraphEqualsModelForward: the plain graph is model.Forward with a VanillaCache.
func TestVanillaGraphEqualsModelForward(t *testing.T) {
	p := loadStories260K(t)
	rng := rand.New(rand.NewPCG(4, 4))
	const B, T = 2, 33
	seqs := [][]int{randTokens(rng, T, p.Config.VocabSize), randTokens(rng, T, p.Config.VocabSize)}
	g, err := New64(p, dmc.DefaultConfig(), B, T, Options[float64]{KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	batch := makeBatch(seqs)
	l, err := g.Forward(batch, StepContext{DMC: false, ZeroOut: 1})
	if err != nil {
		t.Fatal(err)
	}
	got := g.Logits()
	V := p.Config.VocabSize
	var lm float64
	for b, s := range seqs {
		want, err := model.New(p).Forward(model.NewVanillaCache[float64](p.Config), s, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		var worst float64
		for i, w := range want {
			worst = max(worst, math.Abs(got[b*T*V+i]-w))
		}
		if worst > 1e-9 {
			t.Errorf("sequence %d: vanilla graph logits differ from model.Forward by %.3g", b, worst)
		}
		for t := 0; t+1 < T; t++ {
			row := want[t*V : (t+1)*V]
			m := slices.Max(row)
			var z float64
			for _, x := range row {
				z += math.Exp(x - m)
			}
			lm += math.Log(z) + m - row[s[t+1]]
		}
	}
	lm /= float64(B * (T - 1))
	if math.Abs(l.LM-lm) > 1e-10 || l.Loss != l.LM || l.Tokens != B*(T-1) || l.CR != 0 {
		t.Errorf("losses %+v, want LM %.12f over %d tokens", l, lm, B*(T-1))
	}
}

// tinyModel is a small random model whose decision and importance rows are biased so that soft
// decisions and importances sit in their sensitive ranges.
func tinyModel(t *testing.T, layout model.RoPELayout, tie bool) (*model.Params[float64], dmc.Config) {
	t.Helper()
	mc := model.Config{Name: "tiny", Dim: 16, HiddenDim: 24, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 11,
		MaxSeqLen: 16, NormEps: 1e-5, RopeTheta: 10000, RoPE: layout, TieEmbeddings: tie}
	p, err := model.RandomParams[float64](mc, 5)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	scale := func(s []float64, f float64) {
		for i := range s {
			s[i] *= f
		}
	}
	scale(p.Embed, 50) // O(1) activations
	for i := 0; i < mc.VocabSize; i++ {
		p.Embed[i*mc.Dim] = 3 // a constant channel: gives the decision rows an offset to work with
	}
	for li := range p.Layers {
		L := &p.Layers[li]
		scale(L.Wq, 20)
		scale(L.Wk, 20)
		scale(L.Wv, 20)
		scale(L.Wo, 20)
		scale(L.W1, 20)
		scale(L.W3, 20)
		scale(L.W2, 20)
		for i := range L.AttnNorm {
			L.AttnNorm[i] = 0.8 + 0.4*rng.Float64()
			L.FFNNorm[i] = 0.8 + 0.4*rng.Float64()
		}
	}
	if !tie {
		scale(p.Output, 20)
	}
	cfg := dmc.DefaultConfig()
	cfg.Window = 3
	D := mc.HeadDim()
	ch := cfg.Channel(D)
	for li := range p.Layers {
		L := &p.Layers[li]
		for h := 0; h < mc.NKVHeads; h++ {
			row := L.Wk[(h*D+ch)*mc.Dim : (h*D+ch+1)*mc.Dim]
			for i := range row {
				row[i] = 0.05 * rng.NormFloat64()
			}
			row[0] = 5 / 2.3 // k[ch] ≈ 5 ± O(0.5): decisions near the threshold
		}
		for h := 0; h < mc.NHeads; h++ {
			row := L.Wq[(h*D+ch)*mc.Dim : (h*D+ch+1)*mc.Dim]
			for i := range row {
				row[i] = 0.5 * rng.NormFloat64()
			}
			row[0] = -5 / 2.3 // ω = σ(q + 5) around 0.5
		}
	}
	return p, cfg
}

type sampled struct {
	name string
	idx  []int
}

// fdCheck compares the graph's gradient of the selected elements with central differences of
// Forward's loss.
func fdCheck(t *testing.T, g *Graph64, batch Batch, sc StepContext, picks []sampled, tol float64, analytic func() map[string][]float64) {
	t.Helper()
	an := analytic()
	ps := map[string]ParamT[float64]{}
	for _, p := range g.ParamsT() {
		ps[p.Name] = p
	}
	for _, pk := range picks {
		p, ok := ps[pk.name]
		if !ok {
			t.Fatalf("no parameter %s", pk.name)
		}
		var num, den float64
		for _, i := range pk.idx {
			orig := p.Value[i]
			h := 1e-6 * max(1, math.Abs(orig))
			p.Value[i] = orig + h
			lp, err := g.Forward(batch, sc)
			if err != nil {
				t.Fatal(err)
			}
			p.Value[i] = orig - h
			lm, err := g.Forward(batch, sc)
			if err != nil {
				t.Fatal(err)
			}
			p.Value[i] = orig
			fd := (lp.Loss - lm.Loss) / (2 * h)
			a := an[pk.name][i]
			num += (fd - a) * (fd - a)
			den += a * a
		}
		if den == 0 {
			t.Errorf("%s: sampled analytic gradient is zero; the check is vacuous", pk.name)
			continue
		}
		rel := math.Sqrt(num / den)
		if rel > tol {
			t.Errorf("%s: FD relative error %.3g > %.1g", pk.name, rel, tol)
		} else {
			t.Logf("%s: FD relative error %.2g over %d elements", pk.name, rel, len(pk.idx))
		}
	}
}

func gradsOf(t *testing.T, g *Graph64, batch Batch, sc StepContext) map[string][]float64 {
	t.Helper()
	if _, err := g.Step(batch, sc); err != nil {
		t.Fatal(err)
	}
	out := map[string][]float64{}
	for _, p := range g.ParamsT() {
		out[p.Name] = append([]float64(nil), p.Grad...)
	}
	return out
}

// decisionRows lists the elements of the W_k / W_q rows that produce channel ch.
func decisionRows(rows, ch, D, dim int, rng *rand.Rand, n int) []int {
	var idx []int
	for h := 0; h < rows; h++ {
		for i := 0; i < dim; i++ {
			idx = append(idx, (h*D+ch)*dim+i)
		}
	}
	rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
	return idx[:min(n, len(idx))]
}

func randIdx(rng *rand.Rand, size, n int) []int {
	p := rng.Perm(size)
	return p[:min(n, size)]
}

func TestGraphGradientFD(t *testing.T) {
	for _, tc := range []struct {
		name   string
		layout model.RoPELayout
		tie    bool
		useDMC bool
		zero   float64
		kd     float64 // distillation weight (a perturbed copy of the model is the teacher)
	}{
		{"dmc/half/untied", model.RoPEHalf, false, true, 1, 0},
		{"dmc/interleaved/tied", model.RoPEInterleaved, true, true, 1, 0},
		{"vanilla", model.RoPEHalf, false, false, 1, 0},
		{"stage1-zeroout0.4", model.RoPEHalf, true, false, 0.4, 0},
		{"dmc/distill0.6", model.RoPEHalf, false, true, 1, 0.6},
		{"vanilla/distill1", model.RoPEInterleaved, true, false, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, cfg := tinyModel(t, tc.layout, tc.tie)
			c := p.Config
			const B, T = 2, 7
			rng := rand.New(rand.NewPCG(1, 2))
			batch := makeBatch([][]int{randTokens(rng, T, c.VocabSize), randTokens(rng, T, c.VocabSize)})
			opt := Options[float64]{}
			if tc.kd > 0 {
				opt.Teacher = perturbed(p, rng, 0.3)
			}
			g, err := New64(p, cfg, B, T, opt)
			if err != nil {
				t.Fatal(err)
			}
			// CRWeight 0: the straight-through CR gradient is not a derivative of the loss (see
			// TestCRGradientIsStraightThrough).
			sc := StepContext{Step: 3, Seed: 11, DMC: tc.useDMC, ZeroOut: tc.zero, TargetAlpha: 0.5, DistillWeight: tc.kd}
			if tc.kd > 0 {
				l, err := g.Forward(batch, sc)
				if err != nil {
					t.Fatal(err)
				}
				if l.KD <= 1e-3 {
					t.Fatalf("KL to a perturbed teacher is %g: the distillation term would not be exercised", l.KD)
				}
				if want := (1-tc.kd)*l.LM + tc.kd*l.KD; math.Abs(l.Loss-want) > 1e-12 {
					t.Fatalf("loss %.15g, want (1−β)·LM + β·KD = %.15g", l.Loss, want)
				}
			}
			if tc.useDMC {
				l, err := g.Forward(batch, sc)
				if err != nil {
					t.Fatal(err)
				}
				if l.MeanAlpha <= 0.05 || l.MeanAlpha >= 0.95 {
					t.Fatalf("mean α %.3f: decisions are not mixed, the test would not exercise merging", l.MeanAlpha)
				}
			}
			D, ch := c.HeadDim(), cfg.Channel(c.HeadDim())
			picks := []sampled{
				{"model.layers.0.self_attn.k_proj.weight", decisionRows(c.NKVHeads, ch, D, c.Dim, rng, 12)},
				{"model.layers.1.self_attn.k_proj.weight", decisionRows(c.NKVHeads, ch, D, c.Dim, rng, 12)},
				{"model.layers.0.self_attn.q_proj.weight", decisionRows(c.NHeads, ch, D, c.Dim, rng, 12)},
				{"model.layers.1.self_attn.q_proj.weight", randIdx(rng, c.QDim()*c.Dim, 10)},
				{"model.layers.0.self_attn.v_proj.weight", randIdx(rng, c.KVDim()*c.Dim, 10)},
				{"model.layers.1.self_attn.o_proj.weight", randIdx(rng, c.Dim*c.QDim(), 8)},
				{"model.layers.0.mlp.gate_proj.weight", randIdx(rng, c.HiddenDim*c.Dim, 8)},
				{"model.layers.1.mlp.down_proj.weight", randIdx(rng, c.HiddenDim*c.Dim, 8)},
				{"model.layers.0.input_layernorm.weight", randIdx(rng, c.Dim, 6)},
				{"model.layers.1.post_attention_layernorm.weight", randIdx(rng, c.Dim, 6)},
				{"model.norm.weight", randIdx(rng, c.Dim, 6)},
				{"model.embed_tokens.weight", randIdx(rng, c.VocabSize*c.Dim, 16)},
			}
			if !tc.tie {
				picks = append(picks, sampled{"lm_head.weight", randIdx(rng, c.VocabSize*c.Dim, 8)})
			}
			fdCheck(t, g, batch, sc, picks, 1e-6, func() map[string][]float64 { return gradsOf(t, g, batch, sc) })
		})
	}
}

// TestStraightThroughTrainsOnInferenceDecisions: a straight-through step (the recipe's
// fine_tune_decisions: hard) computes exactly the hard-decision loss that evaluation reports,
// and, unlike a hard step, sends a gradient to the W_k rows that produce the decisions.
func TestStraightThroughTrainsOnInferenceDecisions(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	c := p.Config
	const B, T = 2, 7
	rng := rand.New(rand.NewPCG(4, 2))
	batch := makeBatch([][]int{randTokens(rng, T, c.VocabSize), randTokens(rng, T, c.VocabSize)})
	g, err := New64(p, cfg, B, T, Options[float64]{})
	if err != nil {
		t.Fatal(err)
	}
	base := StepContext{Step: 3, Seed: 11, DMC: true, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 1}
	hard, st := base, base
	hard.Hard, st.StraightThrough = true, true
	want, err := g.Forward(batch, hard)
	if err != nil {
		t.Fatal(err)
	}
	if want.MeanAlpha <= 0.05 || want.MeanAlpha >= 0.95 {
		t.Fatalf("mean α %.3f: decisions are not mixed", want.MeanAlpha)
	}
	got, err := g.Step(batch, st)
	if err != nil {
		t.Fatal(err)
	}
	if got.Loss != want.Loss || got.LM != want.LM || got.MeanAlpha != want.MeanAlpha {
		t.Fatalf("straight-through step: loss %.15g lm %.15g α %.6f; hard evaluation: %.15g %.15g %.6f",
			got.Loss, got.LM, got.MeanAlpha, want.Loss, want.LM, want.MeanAlpha)
	}
	D, ch := c.HeadDim(), cfg.Channel(c.HeadDim())
	const wk = "model.layers.0.self_attn.k_proj.weight"
	rows := decisionRows(c.NKVHeads, ch, D, c.Dim, rng, c.NKVHeads*c.Dim)
	norm := func(sc StepContext) float64 {
		g := gradsOf(t, g, batch, sc)[wk]
		s := 0.0
		for _, i := range rows {
			s += g[i] * g[i]
		}
		return math.Sqrt(s)
	}
	if n := norm(hard); n != 0 {
		t.Errorf("hard step: decision rows of %s have gradient norm %g, want 0", wk, n)
	}
	if n := norm(st); !(n > 0) || math.IsInf(n, 0) {
		t.Errorf("straight-through step: decision rows of %s have gradient norm %g, want finite and > 0", wk, n)
	}
}

// TestHeadCRCap: the per-head cap adds a non-negative term to the CR loss that vanishes when
// the cap is out of reach and is at most the mean merge rate when every merge is over it
// (cap just above 1), and it sends the decision rows a gradient of its own.
func TestHeadCRCap(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	c := p.Config
	const B, T = 2, 7
	rng := rand.New(rand.NewPCG(9, 2))
	batch := makeBatch([][]int{randTokens(rng, T, c.VocabSize), randTokens(rng, T, c.VocabSize)})
	// α* = 0: the plain CR hinge is 0, so the CR loss is the cap term alone.
	sc := StepContext{Step: 3, Seed: 11, DMC: true, ZeroOut: 1, TargetAlpha: 0, CRWeight: 1}
	run := func(headCap float64) (Losses, map[string][]float64) {
		g, err := New64(p, cfg, B, T, Options[float64]{HeadCRCap: headCap})
		if err != nil {
			t.Fatal(err)
		}
		l, err := g.Forward(batch, sc)
		if err != nil {
			t.Fatal(err)
		}
		return l, gradsOf(t, g, batch, sc)
	}
	none, gNone := run(0)
	far, _ := run(1e9)
	tight, gTight := run(1.0001)
	if none.CR != 0 || far.CR != 0 {
		t.Fatalf("CR loss %g without a cap and %g with an unreachable one, want 0", none.CR, far.CR)
	}
	if none.MeanAlpha <= 0.05 {
		t.Fatalf("mean α %.3f: too few merges to exercise the cap", none.MeanAlpha)
	}
	if !(tight.CR > 0 && tight.CR <= none.MeanAlpha) || tight.LM != none.LM {
		t.Fatalf("cap 1.0001: CR loss %g (want in (0, mean α %g]), LM %g vs %g", tight.CR, none.MeanAlpha, tight.LM, none.LM)
	}
	const wk = "model.layers.0.self_attn.k_proj.weight"
	D, ch := c.HeadDim(), cfg.Channel(c.HeadDim())
	diff := 0.0
	for _, i := range decisionRows(c.NKVHeads, ch, D, c.Dim, rng, c.NKVHeads*c.Dim) {
		diff = max(diff, math.Abs(gTight[wk][i]-gNone[wk][i]))
	}
	if !(diff > 0) {
		t.Errorf("the cap term changed no gradient of the decision rows of %s", wk)
	}
	if _, err := New64(p, cfg, B, T, Options[float64]{HeadCRCap: 0.5}); err == nil {
		t.Error("a cap below 1 was accepted")
	}
}

// NoiseDamping scales the noise by 1 − d before the rounding (d = 1: none); values outside
// [0, 1] are refused.
func TestNoiseDamping(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	const B, T = 2, 7
	g, err := New64(p, cfg, B, T, Options[float64]{})
	if err != nil {
		t.Fatal(err)
	}
	n := B * T * p.Config.NKVHeads
	full, damped, none := make([]float64, n), make([]float64, n), make([]float64, n)
	sc := StepContext{Seed: 5, Step: 2, DMC: true, ZeroOut: 1}
	g.NoiseInto(full, sc, 1)
	sc.NoiseDamping = 0.25
	g.NoiseInto(damped, sc, 1)
	sc.NoiseDamping = 1
	g.NoiseInto(none, sc, 1)
	for i := range full {
		if damped[i] != 0.75*full[i] || none[i] != 0 || full[i] == 0 {
			t.Fatalf("element %d: full %g, damped %g (want %g), none %g", i, full[i], damped[i], 0.75*full[i], none[i])
		}
	}
	rng := rand.New(rand.NewPCG(2, 2))
	batch := makeBatch([][]int{randTokens(rng, T, p.Config.VocabSize), randTokens(rng, T, p.Config.VocabSize)})
	for _, d := range []float64{-0.1, 1.5, math.NaN()} {
		if _, err := g.Forward(batch, StepContext{DMC: true, ZeroOut: 1, NoiseDamping: d}); err == nil {
			t.Errorf("noise damping %g was accepted", d)
		}
	}
}

// TestCRGradientIsStraightThrough checks the CR term: its value is the hinge of the hard mean,
// and its gradient is that of the same hinge with the soft decisions α̃ in place of the hard ones
// (the straight-through estimator), computed by central differences of the dmc package's
// reference forward with the same noise.
func TestCRGradientIsStraightThrough(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	c := p.Config
	const T = 9
	rng := rand.New(rand.NewPCG(5, 6))
	seq := randTokens(rng, T, c.VocabSize)
	g, err := New64(p, cfg, 1, T, Options[float64]{KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	batch := makeBatch([][]int{seq})
	const alphaStar = 0.9
	sc := StepContext{Step: 2, MicroBatch: 1, Seed: 17, DMC: true, ZeroOut: 1, TargetAlpha: alphaStar}
	key := dmc.NoiseKey{Seed: 17, Step: 2, MicroBatch: 1}
	ref := func(q *model.Params[float64]) *dmc.ParallelOutput {
		o, err := dmc.ParallelForwardWith(q, cfg, seq, dmc.ParallelOptions{Noise: &key})
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	// Forward: soft logits and the CR value match the reference.
	sc.CRWeight = 1
	l, err := g.Forward(batch, sc)
	if err != nil {
		t.Fatal(err)
	}
	o := ref(p)
	var worst float64
	for i, w := range o.Logits {
		worst = max(worst, math.Abs(g.Logits()[i]-w))
	}
	if worst > 1e-9 {
		t.Errorf("soft graph logits differ from dmc.ParallelForwardWith by %.3g", worst)
	}
	if want := max(0, alphaStar-o.MeanHardAlpha()); math.Abs(l.CR-want) > 1e-12 || math.Abs(l.MeanAlpha-o.MeanHardAlpha()) > 1e-12 {
		t.Errorf("CR %.6f mean α %.6f, want %.6f and %.6f", l.CR, l.MeanAlpha, want, o.MeanHardAlpha())
	}
	if math.Abs(l.Loss-(l.LM+l.CR)) > 1e-12 {
		t.Errorf("loss %.12f is not LM + CR = %.12f", l.Loss, l.LM+l.CR)
	}
	softMean := func(o *dmc.ParallelOutput) float64 {
		var s float64
		var n int
		for _, a := range o.Alpha {
			for _, x := range a {
				s += x
				n++
			}
		}
		return s / float64(n)
	}
	if alphaStar <= softMean(o) || alphaStar <= o.MeanHardAlpha() {
		t.Fatalf("the hinge must be active for this test (soft %.3f, hard %.3f)", softMean(o), o.MeanHardAlpha())
	}
	with := gradsOf(t, g, batch, sc)
	sc.CRWeight = 0
	without := gradsOf(t, g, batch, sc)
	D, ch := c.HeadDim(), cfg.Channel(c.HeadDim())
	for _, name := range []string{"model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.k_proj.weight"} {
		li := 0
		if name[13] == '1' {
			li = 1
		}
		var num, den float64
		for _, i := range decisionRows(c.NKVHeads, ch, D, c.Dim, rng, 10) {
			an := with[name][i] - without[name][i]
			q := model.Convert[float64](p)
			row := q.Layers[li].Wk
			orig := row[i]
			h := 1e-6 * max(1, math.Abs(orig))
			row[i] = orig + h
			fp := alphaStar - softMean(ref(q))
			row[i] = orig - h
			fm := alphaStar - softMean(ref(q))
			fd := (fp - fm) / (2 * h)
			num += (fd - an) * (fd - an)
			den += an * an
		}
		if den == 0 {
			t.Fatalf("%s: zero CR gradient", name)
		}
		if rel := math.Sqrt(num / den); rel > 1e-6 {
			t.Errorf("%s: straight-through CR gradient relative error %.3g", name, rel)
		} else {
			t.Logf("%s: straight-through CR gradient relative error %.2g", name, rel)
		}
	}
}

// TestStage1ZeroedEqualsDMCWithoutMerges: with the channel fully zeroed (ZeroOut = 0) the plain
// graph equals the hard DMC graph when no token merges (a = −5 everywhere after the decision
// rows are zeroed).
func TestStage1ZeroedEqualsDMCWithoutMerges(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	if err := dmc.ZeroDecisionRows(p, cfg); err != nil {
		t.Fatal(err)
	}
	const B, T = 2, 7
	rng := rand.New(rand.NewPCG(8, 8))
	batch := makeBatch([][]int{randTokens(rng, T, p.Config.VocabSize), randTokens(rng, T, p.Config.VocabSize)})
	g, err := New64(p, cfg, B, T, Options[float64]{KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	lp, err := g.Forward(batch, StepContext{DMC: true, ZeroOut: 0})
	if err != nil {
		t.Fatal(err)
	}
	plain := append([]float64(nil), g.Logits()...)
	ld, err := g.Forward(batch, StepContext{DMC: true, ZeroOut: 1, Hard: true})
	if err != nil {
		t.Fatal(err)
	}
	var worst float64
	for i, x := range g.Logits() {
		worst = max(worst, math.Abs(x-plain[i]))
	}
	if worst > 1e-12 || ld.MeanAlpha != 0 || math.Abs(ld.LM-lp.LM) > 1e-12 {
		t.Errorf("stage-1 zeroed graph vs DMC without merges: Δlogit %.3g, mean α %g, LM %.12f vs %.12f", worst, ld.MeanAlpha, lp.LM, ld.LM)
	}
}

// TestFloat32GraphTracksFloat64 runs the float32 graph (the trainer's) against the float64 one
// and checks that a Step leaves the parameters untouched and is deterministic.
func TestFloat32GraphTracksFloat64(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	const B, T = 2, 7
	rng := rand.New(rand.NewPCG(2, 2))
	batch := makeBatch([][]int{randTokens(rng, T, p.Config.VocabSize), randTokens(rng, T, p.Config.VocabSize)})
	sc := StepContext{Step: 1, Seed: 3, DMC: true, ZeroOut: 1, TargetAlpha: 0.8, CRWeight: 1}
	g64, err := New64(p, cfg, B, T, Options[float64]{})
	if err != nil {
		t.Fatal(err)
	}
	g32, err := New(model.Convert[float32](p), cfg, B, T)
	if err != nil {
		t.Fatal(err)
	}
	before := g32.Weights()
	l64, err := g64.Step(batch, sc)
	if err != nil {
		t.Fatal(err)
	}
	l32, err := g32.Step(batch, sc)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(l32.LM-l64.LM) > 1e-4*max(1, l64.LM) || math.Abs(l32.MeanAlpha-l64.MeanAlpha) > 0.05 {
		t.Errorf("float32 losses %+v vs float64 %+v", l32, l64)
	}
	after := g32.Weights()
	bt, at := before.Tensors(), after.Tensors()
	for i := range bt {
		if !slices.Equal(bt[i].Data, at[i].Data) {
			t.Fatalf("Step modified parameter %s", bt[i].Name)
		}
	}
	ps32, ps64 := g32.Params(), g64.ParamsT()
	first := make([][]float32, len(ps32))
	for i, p := range ps32 {
		first[i] = append([]float32(nil), p.Grad...)
		var num, den float64
		for j, x := range p.Grad {
			d := float64(x) - ps64[i].Grad[j]
			num += d * d
			den += ps64[i].Grad[j] * ps64[i].Grad[j]
		}
		if den > 0 && math.Sqrt(num/den) > 2e-2 {
			t.Errorf("%s: float32 gradient differs from float64 by %.3g (relative)", p.Name, math.Sqrt(num/den))
		}
	}
	// Forward leaves the gradients alone; a repeated Step reproduces them exactly.
	for _, p := range g32.Params() {
		clear(p.Grad)
	}
	if _, err := g32.Forward(batch, sc); err != nil {
		t.Fatal(err)
	}
	for _, p := range g32.Params() {
		if slices.ContainsFunc(p.Grad, func(x float32) bool { return x != 0 }) {
			t.Fatalf("Forward wrote the gradient of %s", p.Name)
		}
	}
	if _, err := g32.Step(batch, sc); err != nil {
		t.Fatal(err)
	}
	for i, p := range g32.Params() {
		if !slices.Equal(first[i], p.Grad) {
			t.Fatalf("%s: a repeated Step gave a different gradient", p.Name)
		}
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	if _, err := New64(p, cfg, 1, 17, Options[float64]{}); err == nil {
		t.Error("sequence longer than max_seq_len accepted")
	}
	g, err := New64(p, cfg, 1, 4, Options[float64]{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Forward(Batch{Inputs: []int{1, 2, 3}, Targets: []int{1, 2, 3}, BatchSize: 1, SeqLen: 3}, StepContext{}); err == nil {
		t.Error("wrong batch shape accepted")
	}
	if _, err := g.Forward(Batch{Inputs: []int{1, 2, 99, 3}, Targets: []int{1, 2, 3, 4}, BatchSize: 1, SeqLen: 4}, StepContext{ZeroOut: 1}); err == nil {
		t.Error("out-of-vocabulary token accepted")
	}
}

// perturbed returns a copy of p with Gaussian noise of relative size rel on every weight.
func perturbed(p *model.Params[float64], rng *rand.Rand, rel float64) *model.Params[float64] {
	q, err := model.NewParams[float64](p.Config)
	if err != nil {
		panic(err)
	}
	src, dst := p.Tensors(), q.Tensors()
	for i := range src {
		for j, x := range src[i].Data {
			dst[i].Data[j] = x * (1 + rel*rng.NormFloat64())
		}
	}
	return q
}

// TestDistillSelfTeacher: a model distilled from itself has zero KL and, at β = 1, zero
// gradient; at β = 0.5 its loss is half the cross-entropy.
func TestDistillSelfTeacher(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	const B, T = 2, 7
	rng := rand.New(rand.NewPCG(4, 5))
	batch := makeBatch([][]int{randTokens(rng, T, p.Config.VocabSize), randTokens(rng, T, p.Config.VocabSize)})
	g, err := New64(p, cfg, B, T, Options[float64]{Teacher: p})
	if err != nil {
		t.Fatal(err)
	}
	l, err := g.Step(batch, StepContext{ZeroOut: 1, DistillWeight: 1})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(l.KD) > 1e-12 || math.Abs(l.Loss) > 1e-12 {
		t.Errorf("self-distillation: KD %g, loss %g; want 0", l.KD, l.Loss)
	}
	for _, pr := range g.ParamsT() {
		for _, x := range pr.Grad {
			if math.Abs(x) > 1e-12 {
				t.Fatalf("self-distillation at β = 1: %s has gradient %g, want 0", pr.Name, x)
			}
		}
	}
	h, err := g.Forward(batch, StepContext{ZeroOut: 1, DistillWeight: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(h.Loss-0.5*h.LM) > 1e-12 || h.LM <= 0 {
		t.Errorf("β = 0.5 with a perfect teacher: loss %g, want half of LM %g", h.Loss, h.LM)
	}
	if _, err := g.Forward(batch, StepContext{ZeroOut: 1, DistillWeight: 1.5}); err == nil {
		t.Error("distillation weight 1.5 was accepted")
	}
	plain, err := New64(p, cfg, B, T, Options[float64]{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Forward(batch, StepContext{ZeroOut: 1, DistillWeight: 0.5}); err == nil {
		t.Error("a distillation weight without a teacher was accepted")
	}
}

// A ForwardOnly graph (the distillation teacher) computes the same forward pass as a full one,
// holds no gradient buffers and refuses Step.
func TestForwardOnly(t *testing.T) {
	p, cfg := tinyModel(t, model.RoPEHalf, false)
	const B, T = 2, 7
	rng := rand.New(rand.NewPCG(6, 7))
	batch := makeBatch([][]int{randTokens(rng, T, p.Config.VocabSize), randTokens(rng, T, p.Config.VocabSize)})
	full, err := New64(p, cfg, B, T, Options[float64]{KeepLogits: true})
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := New64(p, cfg, B, T, Options[float64]{KeepLogits: true, ForwardOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range []StepContext{{ZeroOut: 1}, {DMC: true, ZeroOut: 1, Hard: true}} {
		a, err := full.Forward(batch, sc)
		if err != nil {
			t.Fatal(err)
		}
		b, err := fwd.Forward(batch, sc)
		if err != nil {
			t.Fatal(err)
		}
		if a.LM != b.LM || !slices.Equal(full.Logits(), fwd.Logits()) {
			t.Errorf("%+v: forward-only LM %g differs from the full graph's %g", sc, b.LM, a.LM)
		}
	}
	for _, pr := range fwd.ParamsT() {
		if pr.Grad != nil {
			t.Fatalf("%s has a gradient buffer in a forward-only graph", pr.Name)
		}
	}
	if _, err := fwd.Step(batch, StepContext{ZeroOut: 1}); err == nil || !strings.Contains(err.Error(), "ForwardOnly") {
		t.Errorf("Step on a forward-only graph: %v", err)
	}
}
