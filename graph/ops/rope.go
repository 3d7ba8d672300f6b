package ops

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/dmc-project/dmc/model"
)

// RoPESpec fixes a rotary embedding over x [B·T, H·D]: row n is position n mod T.
type RoPESpec struct {
	Layout model.RoPELayout
	Theta  float64
	Heads  int // H
	HeadD  int // D
	SeqLen int // T
	// Channel, when ≥ 0, is multiplied by the scalar input s of every head before rotation:
	// s = 0 removes the DMC decision channel from attention, s ∈ (0,1) is the stage-1 zero-out,
	// s = 1 leaves it. −1 disables the scaling (s is then ignored).
	Channel int
}

// RoPE rotates every head of x [B·T, H·D] at its position, after scaling channel Channel by
// the scalar s. Angles are computed in float64 exactly as model.Rotate does.
func RoPE(x, s *G.Node, spec RoPESpec) (*G.Node, error) {
	o, err := newRoPEOp(spec, false)
	if err != nil {
		return nil, err
	}
	return apply(o, x, s)
}

type ropeOp struct {
	spec     RoPESpec
	inverse  bool      // the backward: rotate by −angle, then scale the channel
	cos, sin []float64 // [T, D/2]
	pairA    []int
	pairB    []int
}

func newRoPEOp(spec RoPESpec, inverse bool) (*ropeOp, error) {
	D, T := spec.HeadD, spec.SeqLen
	if D <= 0 || D%2 != 0 || T <= 0 || spec.Heads <= 0 || spec.Channel >= D || spec.Theta <= 0 {
		return nil, fmt.Errorf("RoPE: invalid spec %+v", spec)
	}
	r := model.NewRoPE(model.Config{Dim: D, NHeads: 1, RopeTheta: spec.Theta, RoPE: spec.Layout})
	o := &ropeOp{spec: spec, inverse: inverse, cos: make([]float64, T*D/2), sin: make([]float64, T*D/2)}
	for i := 0; i < D/2; i++ {
		a, b := r.Pair(i)
		o.pairA, o.pairB = append(o.pairA, a), append(o.pairB, b)
		for t := 0; t < T; t++ {
			o.sin[t*D/2+i], o.cos[t*D/2+i] = math.Sincos(r.Angle(i, t))
		}
	}
	return o, nil
}

func (o *ropeOp) key() string {
	s := o.spec
	return fmt.Sprintf("RoPE{%s,theta=%x,H=%d,D=%d,T=%d,ch=%d,inv=%t}", s.Layout, math.Float64bits(s.Theta), s.Heads, s.HeadD, s.SeqLen, s.Channel, o.inverse)
}
func (o *ropeOp) signature() ([]arg, arg) { return []arg{matArg, scalarArg}, matArg }
func (o *ropeOp) diffWRT() []bool         { return []bool{true, false} }
func (o *ropeOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	s := o.spec
	if in[0][1] != s.Heads*s.HeadD || in[0][0]%s.SeqLen != 0 {
		return nil, fmt.Errorf("%s: input shape %v is not [B·%d, %d]", o.key(), in[0], s.SeqLen, s.Heads*s.HeadD)
	}
	return in[0].Clone(), nil
}
func (o *ropeOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	sc := scalar(in[1])
	dispatch(out.Dtype(), func() {
		ropeKernel(o, out.Float32s(), data[float32](in[0]), sc)
	}, func() {
		ropeKernel(o, out.Float64s(), data[float64](in[0]), sc)
	})
	return 0, nil
}
func (o *ropeOp) grad(in G.Nodes, _, dy *G.Node) (G.Nodes, error) {
	inv, err := newRoPEOp(o.spec, true)
	if err != nil {
		return nil, err
	}
	dx, err := apply(inv, dy, in[1])
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, nil}, nil
}

// ropeKernel: forward y = R_t(S x) where S scales channel ch by s; backward dx = S R_tᵀ dy.
func ropeKernel[T Float](o *ropeOp, y, x []T, s float64) {
	D, H, Tn, ch := o.spec.HeadD, o.spec.Heads, o.spec.SeqLen, o.spec.Channel
	width := H * D
	half := D / 2
	parallel(len(x)/width, width, func(lo, hi int) {
		for n := lo; n < hi; n++ {
			t := n % Tn
			cs, sn := o.cos[t*half:(t+1)*half], o.sin[t*half:(t+1)*half]
			xr, yr := x[n*width:(n+1)*width], y[n*width:(n+1)*width]
			copy(yr, xr)
			for h := 0; h < H; h++ {
				v := yr[h*D : (h+1)*D]
				if ch >= 0 && !o.inverse {
					v[ch] = T(float64(v[ch]) * s)
				}
				for i := 0; i < half; i++ {
					a, b := o.pairA[i], o.pairB[i]
					c, si := cs[i], sn[i]
					if o.inverse {
						si = -si
					}
					x0, x1 := float64(v[a]), float64(v[b])
					v[a] = T(x0*c - x1*si)
					v[b] = T(x0*si + x1*c)
				}
				if ch >= 0 && o.inverse {
					v[ch] = T(float64(v[ch]) * s)
				}
			}
		}
	})
}
