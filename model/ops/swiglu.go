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
	da, err := apply(swiGLUGrad{0}, in[0], in[1], dy)
	if err != nil {
		return nil, err
	}
	db, err := apply(swiGLUGrad{1}, in[0], in[1], dy)
	if err != nil {
		return nil, err
	}
	return G.Nodes{da, db}, nil
}

// swiGLUGrad is da = dy·b·σ(a)(1 + a(1−σ(a))) (wrt 0) or db = dy·silu(a) (wrt 1).
type swiGLUGrad struct{ wrt int }

func (o swiGLUGrad) key() string                                 { return fmt.Sprintf("SwiGLUGrad{wrt=%d}", o.wrt) }
func (swiGLUGrad) signature() ([]arg, arg)                       { return []arg{matArg, matArg, matArg}, matArg }
func (swiGLUGrad) shape(in []tensor.Shape) (tensor.Shape, error) { return in[0].Clone(), nil }
func (o swiGLUGrad) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		swiGLUKernel(o.wrt, out.Float32s(), data[float32](in[0]), data[float32](in[1]), data[float32](in[2]))
	}, func() {
		swiGLUKernel(o.wrt, out.Float64s(), data[float64](in[0]), data[float64](in[1]), data[float64](in[2]))
	})
	return 0, nil
}

// swiGLUKernel: mode −1 forward, 0 gradient wrt a, 1 gradient wrt b.
func swiGLUKernel[T Float](mode int, out, a, b, dy []T) {
	exp := math.Exp
	if isFloat32[T]() {
		exp = fastExp
	}
	parallel(len(a), 8, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x := float64(a[i])
			sg := 1 / (1 + exp(-x))
			switch mode {
			case -1:
				// Same expression as model.SiLU so float64 results agree bit for bit.
				out[i] = a[i] / (1 + T(exp(-x))) * b[i]
			case 0:
				out[i] = T(float64(dy[i]) * float64(b[i]) * sg * (1 + x*(1-sg)))
			default:
				out[i] = T(float64(dy[i]) * x * sg)
			}
		}
	})
}
