package trainer

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/dmc-project/dmc/trainer/step"
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
	M, V                           [][]float32 // first and second moments of what is trained (see Train)
	T                              int         // number of updates taken (bias correction)
	// Train, when set (Restrict), says what of each parameter is updated: the moments hold
	// only those elements (a trained row subset is stored compacted, a frozen parameter has
	// none). Nil: everything is trained and the moments are shaped like the parameters.
	Train []step.Trained
	cols  []int
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

// Restrict limits the optimiser to what train selects (one entry per parameter; nil: all) and
// reallocates the moments to match (zeroed).
func (o *AdamW) Restrict(params []Param, train []step.Trained) error {
	if train == nil {
		return nil
	}
	if len(train) != len(params) {
		return fmt.Errorf("trainer: %d training selections for %d parameters", len(train), len(params))
	}
	o.Train, o.cols = train, make([]int, len(params))
	for i, p := range params {
		cols := len(p.Value)
		if len(p.Shape) == 2 {
			cols = p.Shape[1]
		}
		o.cols[i] = cols
		for k, r := range train[i].Rows {
			if len(p.Shape) != 2 || r < 0 || r >= p.Shape[0] {
				return fmt.Errorf("trainer: row %d of %s %v cannot be trained", r, p.Name, p.Shape)
			}
			if k > 0 && r <= train[i].Rows[k-1] {
				return fmt.Errorf("trainer: the trained rows of %s must ascend without repeats", p.Name)
			}
		}
		n := train[i].Elements(len(p.Value), cols)
		o.M[i], o.V[i] = make([]float32, n), make([]float32, n)
	}
	return nil
}

// selection is what of parameter i is trained.
func (o *AdamW) selection(i int) step.Trained {
	if o.Train == nil {
		return step.Trained{All: true}
	}
	return o.Train[i]
}

// MomentShape is the shape of parameter i's moments as checkpoints store them: the
// parameter's, [len(rows), cols] for a row subset, nil for a frozen parameter.
func (o *AdamW) MomentShape(i int, p Param) []int {
	sel := o.selection(i)
	switch {
	case sel.All:
		return p.Shape
	case sel.Frozen():
		return nil
	}
	return []int{len(sel.Rows), o.cols[i]}
}

// ResetMoments zeroes the moments of element j of parameter i (nothing when it is not trained).
func (o *AdamW) ResetMoments(i, j int) {
	sel := o.selection(i)
	switch {
	case sel.All:
		o.M[i][j], o.V[i][j] = 0, 0
	case sel.Frozen():
	default:
		cols := o.cols[i]
		if k, ok := slices.BinarySearch(sel.Rows, j/cols); ok {
			o.M[i][k*cols+j%cols], o.V[i][k*cols+j%cols] = 0, 0
		}
	}
}

// MaskUntrained zeroes the gradient of every element the optimiser does not train, so that
// the global norm and the clipping see only what is trained.
func (o *AdamW) MaskUntrained(grads [][]float32) {
	if o.Train == nil {
		return
	}
	for i, g := range grads {
		sel := o.Train[i]
		switch {
		case sel.All:
		case sel.Frozen():
			clear(g)
		default:
			cols, next := o.cols[i], 0
			for r := 0; r*cols < len(g); r++ {
				if next < len(sel.Rows) && sel.Rows[next] == r {
					next++
					continue
				}
				clear(g[r*cols : (r+1)*cols])
			}
		}
	}
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
		sel := o.selection(i)
		if len(g) != len(w) || len(m) != len(v) || len(m) != sel.Elements(len(w), o.colsOf(i, len(w))) {
			panic(fmt.Sprintf("trainer: AdamW param %q: %d values, %d grads, %d moments", p.Name, len(w), len(g), len(m)))
		}
		keep := float32(1)
		if o.Decay[i] {
			keep = float32(1 - lr*o.WeightDecay)
		}
		update := func(w, g, m, v []float32) {
			for j := range w {
				gj := g[j]
				mj := b1*m[j] + c1*gj
				vj := b2*v[j] + c2*gj*gj
				m[j], v[j] = mj, vj
				denom := float32(math.Sqrt(float64(vj)))*invSqrtBC2 + eps
				w[j] = w[j]*keep - stepSize*mj/denom
			}
		}
		if sel.All {
			update(w, g, m, v)
			continue
		}
		cols := o.cols[i]
		for k, r := range sel.Rows {
			update(w[r*cols:(r+1)*cols], g[r*cols:(r+1)*cols], m[k*cols:(k+1)*cols], v[k*cols:(k+1)*cols])
		}
	}
}

func (o *AdamW) colsOf(i, n int) int {
	if o.cols == nil {
		return n
	}
	return o.cols[i]
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
