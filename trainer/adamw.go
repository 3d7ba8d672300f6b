package trainer

import (
	"fmt"
	"math"
	"strings"
)

// AdamW is Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's formulation:
//
//	p ← p·(1 − lr·wd)                       (only where Decay[i])
//	m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
//	p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)
//
// Moments are fp32 buffers allocated once; Update allocates nothing.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	Decay                          []bool      // per parameter: apply weight decay
	M, V                           [][]float32 // first and second moments, shaped like the params
	T                              int         // number of updates taken (bias correction)
}

// DefaultDecay is the usual weight-decay mask: matrices decay; vectors (norm weights, biases)
// and anything whose name marks it as a norm do not.
func DefaultDecay(p Param) bool {
	if len(p.Shape) < 2 {
		return false
	}
	return !strings.Contains(strings.ToLower(p.Name), "norm")
}

// NewAdamW allocates zeroed moments for params. decay selects the parameters that get weight
// decay (nil means DefaultDecay).
func NewAdamW(params []Param, beta1, beta2, eps, weightDecay float64, decay func(Param) bool) *AdamW {
	if decay == nil {
		decay = DefaultDecay
	}
	o := &AdamW{Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: weightDecay,
		Decay: make([]bool, len(params)), M: make([][]float32, len(params)), V: make([][]float32, len(params))}
	for i, p := range params {
		o.Decay[i] = decay(p)
		o.M[i] = make([]float32, len(p.Value))
		o.V[i] = make([]float32, len(p.Value))
	}
	return o
}

// Update applies one AdamW step with learning rate lr to params using grads (grads[i] has the
// length of params[i].Value). It panics on mismatched lengths: that is a wiring bug.
func (o *AdamW) Update(params []Param, grads [][]float32, lr float64) {
	if len(params) != len(o.M) || len(grads) != len(params) {
		panic(fmt.Sprintf("trainer: AdamW has %d moment buffers, got %d params and %d grads", len(o.M), len(params), len(grads)))
	}
	o.T++
	bc1 := 1 - math.Pow(o.Beta1, float64(o.T))
	bc2 := 1 - math.Pow(o.Beta2, float64(o.T))
	b1, b2 := float32(o.Beta1), float32(o.Beta2)
	c1, c2 := float32(1-o.Beta1), float32(1-o.Beta2)
	stepSize := float32(lr / bc1)
	invSqrtBC2 := float32(1 / math.Sqrt(bc2))
	eps := float32(o.Eps)
	for i, p := range params {
		w, g, m, v := p.Value, grads[i], o.M[i], o.V[i]
		if len(w) != len(m) || len(g) != len(m) {
			panic(fmt.Sprintf("trainer: AdamW param %q: %d values, %d grads, %d moments", p.Name, len(w), len(g), len(m)))
		}
		keep := float32(1)
		if o.Decay[i] {
			keep = float32(1 - lr*o.WeightDecay)
		}
		for j := range w {
			gj := g[j]
			mj := b1*m[j] + c1*gj
			vj := b2*v[j] + c2*gj*gj
			m[j], v[j] = mj, vj
			denom := float32(math.Sqrt(float64(vj)))*invSqrtBC2 + eps
			w[j] = w[j]*keep - stepSize*mj/denom
		}
	}
}

// GlobalNorm is the L2 norm over all gradient buffers, accumulated in float64.
func GlobalNorm(grads [][]float32) float64 {
	var s float64
	for _, g := range grads {
		for _, x := range g {
			s += float64(x) * float64(x)
		}
	}
	return math.Sqrt(s)
}

// ClipGlobalNorm scales grads so that their global norm is at most maxNorm (maxNorm ≤ 0
// disables clipping) and returns the norm before clipping.
func ClipGlobalNorm(grads [][]float32, maxNorm float64) float64 {
	norm := GlobalNorm(grads)
	if maxNorm > 0 && norm > maxNorm && !math.IsInf(norm, 0) && !math.IsNaN(norm) {
		scaleAll(grads, float32(maxNorm/norm))
	}
	return norm
}

func scaleAll(grads [][]float32, s float32) {
	for _, g := range grads {
		for j := range g {
			g[j] *= s
		}
	}
}
