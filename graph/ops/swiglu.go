package ops

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// SwiGLU is silu(a)·b elementwise for a, b [N, h] (a = gate_proj output, b = up_proj output).
func SwiGLU(a, b *G.Node) (*G.Node, error) { return apply(swiGLUOp{}, a, b) }

type swiGLUOp struct{}

func (swiGLUOp) key() string             { return "SwiGLU" }
func (swiGLUOp) signature() ([]arg, arg) { return []arg{matArg, matArg}, matArg }
func (swiGLUOp) diffWRT() []bool         { return []bool{true, true} }
func (swiGLUOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if !in[0].Eq(in[1]) {
		return nil, fmt.Errorf("SwiGLU: shapes %v and %v differ", in[0], in[1])
	}
	return in[0].Clone(), nil
}
func (swiGLUOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		swiGLUKernel(-1, out.Float32s(), data[float32](in[0]), data[float32](in[1]), nil)
	}, func() {
		swiGLUKernel(-1, out.Float64s(), data[float64](in[0]), data[float64](in[1]), nil)
	})
	return 0, nil
}
func (swiGLUOp) grad(in G.Nodes, _, dy *G.Node) (G.Nodes, error) {
	packed, err := apply(swiGLUGrad{}, in[0], in[1], dy)
	if err != nil {
		return nil, err
	}
	return unpackAll("SwiGLU", packed, in[0].Shape(), in[1].Shape())
}

// swiGLUGrad is packed [da | db] with da = dy·b·σ(a)(1 + a(1−σ(a))) and db = dy·silu(a): one
// sigmoid per element for both.
type swiGLUGrad struct{}

func (swiGLUGrad) key() string             { return "SwiGLUGrad" }
func (swiGLUGrad) signature() ([]arg, arg) { return []arg{matArg, matArg, matArg}, vecArg }
func (swiGLUGrad) shape(in []tensor.Shape) (tensor.Shape, error) {
	return tensor.Shape{2 * in[0].TotalSize()}, nil
}
func (o swiGLUGrad) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		swiGLUKernel(1, out.Float32s(), data[float32](in[0]), data[float32](in[1]), data[float32](in[2]))
	}, func() {
		swiGLUKernel(1, out.Float64s(), data[float64](in[0]), data[float64](in[1]), data[float64](in[2]))
	})
	return 0, nil
}

// swiGLUKernel: mode −1 forward into out; mode 1 backward into out = [da | db].
func swiGLUKernel[T Float](mode int, out, a, b, dy []T) {
	n := len(a)
	parallel(n, 8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x := float64(a[i])
			e := math.Exp(-x)
			if mode < 0 {
				// Same expression as model.SiLU so float64 results agree bit for bit.
				out[i] = a[i] / (1 + T(e)) * b[i]
				continue
			}
			sg := 1 / (1 + e)
			g := float64(dy[i])
			out[i] = T(g * float64(b[i]) * sg * (1 + x*(1-sg)))
			out[n+i] = T(g * x * sg)
		}
	})
}
