package dmc

import (
	"math"

	"github.com/dmc-project/dmc/model"
)

// TargetCR is the compression-rate schedule CR(s) = 1 + (final − 1)·min(1, s/ramp): a linear
// ramp from 1 at step 0 to final at step ramp, constant afterwards (ramp ≤ 0: final at once).
func TargetCR(step, ramp int, final float64) float64 {
	f := 1.0
	if ramp > 0 {
		f = min(1, max(0, float64(step)/float64(ramp)))
	}
	return 1 + (final-1)*f
}

// TargetAlpha is α* = 1 − 1/CR, the mean merge rate that yields compression rate cr.
func TargetAlpha(cr float64) float64 { return 1 - 1/cr }

// AchievedCR is 1/(1 − mean α), the compression rate a mean merge rate implies (+Inf at 1).
func AchievedCR(meanAlpha float64) float64 { return 1 / (1 - meanAlpha) }

// CRLoss is L_CR = mean_b max(0, α* − ᾱ_b) over the per-sequence mean straight-through
// decisions meanAlpha (ᾱ_b, over layers, KV heads and positions of sequence b). It is one-sided:
// compressing more than the target costs nothing.
func CRLoss(meanAlpha []float64, targetAlpha float64) float64 {
	if len(meanAlpha) == 0 {
		return 0
	}
	var s float64
	for _, a := range meanAlpha {
		s += max(0, targetAlpha-a)
	}
	return s / float64(len(meanAlpha))
}

// CRLossGrad writes ∂L_CR/∂ᾱ_b into grad: −1/B where the sequence is under target, else 0.
func CRLossGrad(meanAlpha []float64, targetAlpha float64, grad []float64) {
	if len(grad) != len(meanAlpha) {
		panic("dmc.CRLossGrad: grad and meanAlpha lengths differ")
	}
	for i, a := range meanAlpha {
		grad[i] = 0
		if targetAlpha > a {
			grad[i] = -1 / float64(len(meanAlpha))
		}
	}
}

// ZeroOutFactor is the stage-1 multiplier of q[ch] and k[ch] at the reference decay fraction:
// ZeroOutFactorAt(step, steps, 0.8).
func ZeroOutFactor(step, steps int) float64 { return ZeroOutFactorAt(step, steps, 0.8) }

// ZeroOutFactorAt is the stage-1 multiplier max(0, 1 − step/(frac·steps)), which reaches 0
// after the fraction frac of the stage (steps ≤ 0: already 0).
func ZeroOutFactorAt(step, steps int, frac float64) float64 {
	if steps <= 0 {
		return 0
	}
	return max(0, 1-float64(step)/(frac*float64(steps)))
}

// ZeroDecisionRows sets to zero the rows of W_q (every query head) and W_k (every KV head) that
// produce the decision channel, ending stage 1: afterwards a = −DecisionOffset and
// ω = σ(ImportanceOffset) + ε for every token until training moves the rows. It returns an error
// when the channel does not exist in the model's heads.
func ZeroDecisionRows[T model.Float](p *model.Params[T], cfg Config) error {
	rows, err := DecisionRows(p, cfg)
	for _, r := range rows {
		clear(r)
	}
	return err
}

// DecisionRows returns the rows of W_q (every query head) and W_k (every KV head) of every layer
// that produce the decision channel, as views into p. It returns an error when the channel does
// not exist in the model's heads.
func DecisionRows[T model.Float](p *model.Params[T], cfg Config) ([][]T, error) {
	c := p.Config
	D := c.HeadDim()
	if err := cfg.CheckHeadDim(D); err != nil {
		return nil, err
	}
	ch := cfg.Channel(D)
	rows := make([][]T, 0, len(p.Layers)*(c.NHeads+c.NKVHeads))
	for li := range p.Layers {
		L := &p.Layers[li]
		for h := 0; h < c.NHeads; h++ {
			rows = append(rows, L.Wq[(h*D+ch)*c.Dim:(h*D+ch+1)*c.Dim])
		}
		for h := 0; h < c.NKVHeads; h++ {
			rows = append(rows, L.Wk[(h*D+ch)*c.Dim:(h*D+ch+1)*c.Dim])
		}
	}
	return rows, nil
}

// AutoDecisionOffset is the decision offset a retrofit to compression rate cr starts from when
// the recipe does not set one: the offset at which the logistic noise of training merges a
// fraction p0 = α*(cr)/4 of the tokens (clamped to [0.01, 0.15]), offset = ln((1 − p0)/p0).
// After stage 1 the decision channel is zero, so a = −offset for every token and the merge
// rate at the start is p0 whatever the model; the decisions then sit where the noise gives
// their logits a gradient (the reference's 5 merges 0.7% and learns only over billions of
// tokens). CR 2 gives 1.95, CR 4 and above 1.73.
func AutoDecisionOffset(cr float64) float64 {
	p0 := min(0.15, max(0.01, TargetAlpha(max(cr, 1))/4))
	return math.Round(100*math.Log((1-p0)/p0)) / 100
}
