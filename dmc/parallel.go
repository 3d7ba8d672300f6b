package dmc

import (
	"fmt"
	"math"

	"github.com/dmc-project/dmc/model"
)

// PartialAccumulation computes the training-time partial states of one KV head (dmc-spec.md §5):
//
//	x̃_i = Σ_{j=i−W+1..i} c_ij ω_j x_j / Σ_{j=i−W+1..i} c_ij ω_j,   c_ij = Π_{m=j+1..i} α̃_m
//
// for n tokens: x is [n, D] (pre-RoPE), omega and alpha are [n], out is [n, D]. W = 0 sums back
// to the start of the sequence. With hard α these are exactly the slot contents the inference
// cache holds after each token. The sum is evaluated as written (no running subtraction), so
// this is the oracle for faster forms.
func PartialAccumulation(x, omega, alpha []float64, D, W int, out []float64) {
	n := len(omega)
	if len(alpha) != n || len(x) != n*D || len(out) != n*D {
		panic("dmc.PartialAccumulation: x, omega, alpha and out lengths do not agree")
	}
	num := make([]float64, D)
	for i := 0; i < n; i++ {
		lo := 0
		if W > 0 {
			lo = max(0, i-W+1)
		}
		clear(num)
		var den float64
		c := 1.0 // c_ij, starting at j = i
		for j := i; j >= lo; j-- {
			w := c * omega[j]
			for d, xv := range x[j*D : (j+1)*D] {
				num[d] += w * xv
			}
			den += w
			c *= alpha[j]
			if c == 0 {
				break // every older term has weight exactly 0
			}
		}
		for d := range num {
			out[i*D+d] = num[d] / den
		}
	}
}

// MaskValue is the additive attention mask of query i over partial state j for a sequence whose
// relaxed decisions are alpha: 0 for j = i, log(1 − α̃_{j+1}) for j < i, −∞ for j > i. A state
// is hidden to the degree the next token merged into it. α̃_{j+1} = 1 gives −∞ (weight exactly 0
// after the softmax), never NaN.
func MaskValue(alpha []float64, i, j int) float64 {
	switch {
	case j == i:
		return 0
	case j > i:
		return math.Inf(-1)
	}
	return math.Log1p(-alpha[j+1])
}

// HardMaskValue is the evaluation mask −∞·α_{j+1} for j < i (0 for j = i, −∞ for j > i), with
// α_{j+1} = 0 mapped to 0 rather than the IEEE NaN of −∞·0.
func HardMaskValue(alpha []float64, i, j int) float64 {
	switch {
	case j == i:
		return 0
	case j > i:
		return math.Inf(-1)
	}
	if alpha[j+1] > 0.5 {
		return math.Inf(-1)
	}
	return 0
}

// Mask fills out ([n, n], row = query) with MaskValue for one head's decisions.
func Mask(alpha []float64, out []float64) {
	n := len(alpha)
	if len(out) != n*n {
		panic("dmc.Mask: out must be [n, n]")
	}
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			out[i*n+j] = MaskValue(alpha, i, j)
		}
	}
}

// ParallelAttention is the reference DMC attention of one layer in the parallel training form,
// for one sequence of n tokens starting at position 0:
//   - q [n, NHeads·D], k and v [n, NKVHeads·D]: pre-RoPE, decision channel already zeroed (Gates);
//   - alpha and omega [NKVHeads·n], head-major (h·n + t): decisions (relaxed or hard) and
//     importances;
//   - out [n, NHeads·D]: softmax(q_i·R_i x̃k_j/√D + M_ij) x̃v_j, with q_i and x̃k_i RoPE-rotated at
//     position i. The G query heads of a group share their KV head's states and mask.
func ParallelAttention(mc model.Config, cfg Config, q, k, v, alpha, omega, out []float64) {
	D, G, Hkv := mc.HeadDim(), mc.GroupSize(), mc.NKVHeads
	qd, kvd := mc.QDim(), mc.KVDim()
	n := len(k) / kvd
	if len(q) != n*qd || len(k) != n*kvd || len(v) != n*kvd || len(alpha) != n*Hkv || len(omega) != n*Hkv || len(out) != n*qd {
		panic("dmc.ParallelAttention: slice lengths do not match the model config")
	}
	rope := model.NewRoPE(mc)
	qr := make([]float64, n*qd)
	copy(qr, q)
	for t := 0; t < n; t++ {
		model.Rotate(rope, qr[t*qd:(t+1)*qd], t)
	}
	xk, xv := make([]float64, n*D), make([]float64, n*D)
	kt, vt := make([]float64, n*D), make([]float64, n*D)
	scores := make([]float64, n)
	scale := 1 / math.Sqrt(float64(D))
	for h := 0; h < Hkv; h++ {
		for t := 0; t < n; t++ {
			copy(xk[t*D:(t+1)*D], k[t*kvd+h*D:t*kvd+(h+1)*D])
			copy(xv[t*D:(t+1)*D], v[t*kvd+h*D:t*kvd+(h+1)*D])
		}
		al, om := alpha[h*n:(h+1)*n], omega[h*n:(h+1)*n]
		PartialAccumulation(xk, om, al, D, cfg.Window, kt)
		PartialAccumulation(xv, om, al, D, cfg.Window, vt)
		for t := 0; t < n; t++ {
			model.Rotate(rope, kt[t*D:(t+1)*D], t)
		}
		for g := h * G; g < (h+1)*G; g++ {
			for i := 0; i < n; i++ {
				qi := qr[i*qd+g*D : i*qd+(g+1)*D]
				maxS := math.Inf(-1)
				for j := 0; j <= i; j++ {
					s := math.Inf(-1)
					if m := MaskValue(al, i, j); !math.IsInf(m, -1) {
						s = model.Dot(qi, kt[j*D:(j+1)*D])*scale + m
					}
					scores[j] = s
					maxS = max(maxS, s)
				}
				var sum float64
				for j := 0; j <= i; j++ {
					scores[j] = math.Exp(scores[j] - maxS) // the j = i term keeps maxS finite
					sum += scores[j]
				}
				oi := out[i*qd+g*D : i*qd+(g+1)*D]
				clear(oi)
				for j := 0; j <= i; j++ {
					if scores[j] == 0 {
						continue
					}
					w := scores[j] / sum
					for d := range oi {
						oi[d] += w * vt[j*D+d]
					}
				}
			}
		}
	}
}

// ParallelOptions selects the decisions of ParallelForwardWith.
type ParallelOptions struct {
	// Hard uses α = 1[a > 0] (evaluation); otherwise the relaxation σ((a + noise)/τ).
	Hard bool
	// Noise, when set with Hard false, draws logistic noise from this key; its Layer field is
	// replaced by each layer's index, and the element index is h·n + t (one sequence, b = 0).
	Noise *NoiseKey
	// Force, FOR BENCHMARKS AND TESTS ONLY, replaces the decisions by hard ones from f (position
	// 0 still appends), as WithForcedDecisions does for the cache.
	Force DecisionFunc
}

// ParallelOutput is the result of ParallelForwardWith.
type ParallelOutput struct {
	Logits []float64   // [n, VocabSize]
	Alpha  [][]float64 // per layer, [NKVHeads·n] head-major: the decisions used (soft or hard)
	Omega  [][]float64 // per layer, [NKVHeads·n]: the importances
}

// MeanHardAlpha is ᾱ: the mean straight-through decision 1[α > 0.5] over every layer, KV head
// and position (position 0 included, where α = 0), so AchievedCR(MeanHardAlpha()) is the
// tokens/slots ratio the inference cache would reach with these decisions.
func (o *ParallelOutput) MeanHardAlpha() float64 {
	var sum float64
	var cnt int
	for _, l := range o.Alpha {
		for _, a := range l {
			sum += StraightThrough(a)
			cnt++
		}
	}
	if cnt == 0 {
		return 0
	}
	return sum / float64(cnt)
}

// ParallelForward is the float64 reference forward of a DMC model in the parallel training form
// over one sequence starting at position 0, returning [len(tokens), VocabSize] logits. With hard
// decisions it equals model.Forward with a CompressedCache (the invariant of dmc-spec.md §5);
// otherwise it uses the noiseless relaxation σ(a/τ).
func ParallelForward(p *model.Params[float64], cfg Config, tokens []int, hard bool) ([]float64, error) {
	o, err := ParallelForwardWith(p, cfg, tokens, ParallelOptions{Hard: hard})
	if err != nil {
		return nil, err
	}
	return o.Logits, nil
}

// ParallelForwardWith is ParallelForward with a choice of decisions, also returning them.
func ParallelForwardWith(p *model.Params[float64], cfg Config, tokens []int, opt ParallelOptions) (*ParallelOutput, error) {
	c := p.Config
	if err := p.CheckShapes(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.CheckHeadDim(c.HeadDim()); err != nil {
		return nil, err
	}
	n := len(tokens)
	if n == 0 {
		return nil, fmt.Errorf("dmc parallel forward: no tokens")
	}
	if n > c.MaxSeqLen {
		return nil, fmt.Errorf("dmc parallel forward: %d tokens exceed the model's max_seq_len %d", n, c.MaxSeqLen)
	}
	d, hd, qd, kvd := c.Dim, c.HiddenDim, c.QDim(), c.KVDim()
	x := make([]float64, n*d)
	for t, tok := range tokens {
		if tok < 0 || tok >= c.VocabSize {
			return nil, fmt.Errorf("dmc parallel forward: token id %d at index %d is outside the vocabulary [0, %d)", tok, t, c.VocabSize)
		}
		copy(x[t*d:(t+1)*d], p.Embed[tok*d:(tok+1)*d])
	}
	out := &ParallelOutput{}
	xn := make([]float64, n*d)
	q, k, v := make([]float64, n*qd), make([]float64, n*kvd), make([]float64, n*kvd)
	att, o := make([]float64, n*qd), make([]float64, n*d)
	h1, h3 := make([]float64, n*hd), make([]float64, n*hd)
	var noise []float64
	if !opt.Hard && opt.Noise != nil {
		noise = make([]float64, n*c.NKVHeads)
	}
	for li := range p.Layers {
		L := &p.Layers[li]
		model.RMSNorm(xn, x, L.AttnNorm, c.NormEps)
		model.MatMulT(q, xn, L.Wq, n, d, qd)
		model.MatMulT(k, xn, L.Wk, n, d, kvd)
		model.MatMulT(v, xn, L.Wv, n, d, kvd)
		logit, omega, alpha := make([]float64, n*c.NKVHeads), make([]float64, n*c.NKVHeads), make([]float64, n*c.NKVHeads)
		Gates(c, cfg, q, k, logit, omega)
		switch {
		case opt.Force != nil:
			for h := 0; h < c.NKVHeads; h++ {
				for t := 1; t < n; t++ {
					if opt.Force(li, h, t) {
						alpha[h*n+t] = 1
					}
				}
			}
		case opt.Hard:
			HardDecisions(logit, n, alpha)
		default:
			if noise != nil {
				key := *opt.Noise
				key.Layer = uint64(li)
				key.Fill(noise)
			}
			SoftDecisions(logit, noise, n, cfg.Temperature, alpha)
		}
		out.Alpha, out.Omega = append(out.Alpha, alpha), append(out.Omega, omega)
		ParallelAttention(c, cfg, q, k, v, alpha, omega, att)
		model.MatMulT(o, att, L.Wo, n, qd, d)
		for i := range x {
			x[i] += o[i]
		}
		model.RMSNorm(xn, x, L.FFNNorm, c.NormEps)
		model.MatMulT(h1, xn, L.W1, n, d, hd)
		model.MatMulT(h3, xn, L.W3, n, d, hd)
		for i := range h1 {
			h1[i] = model.SiLU(h1[i]) * h3[i]
		}
		model.MatMulT(o, h1, L.W2, n, hd, d)
		for i := range x {
			x[i] += o[i]
		}
	}
	model.RMSNorm(xn, x, p.FinalNorm, c.NormEps)
	out.Logits = make([]float64, n*c.VocabSize)
	model.MatMulT(out.Logits, xn, p.Output, n, d, c.VocabSize)
	return out, nil
}
