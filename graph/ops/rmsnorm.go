package ops

import (
	"fmt"
	"math"
	"runtime"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// RMSNorm is y = x / sqrt(mean(x²) + eps) · w over the last axis of x [N, d], w [d].
func RMSNorm(x, w *G.Node, eps float64) (*G.Node, error) { return apply(rmsNormOp{eps}, x, w) }

type rmsNormOp struct{ eps float64 }

func (o rmsNormOp) key() string           { return fmt.Sprintf("RMSNorm{eps=%x}", math.Float64bits(o.eps)) }
func (rmsNormOp) signature() ([]arg, arg) { return []arg{matArg, vecArg}, matArg }
func (rmsNormOp) diffWRT() []bool         { return []bool{true, true} }
func (o rmsNormOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if in[0][1] != in[1][0] {
		return nil, fmt.Errorf("RMSNorm: x %v and w %v disagree on the width", in[0], in[1])
	}
	return in[0].Clone(), nil
}
func (o rmsNormOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		rmsNormFwd(out.Float32s(), data[float32](in[0]), data[float32](in[1]), o.eps)
	}, func() {
		rmsNormFwd(out.Float64s(), data[float64](in[0]), data[float64](in[1]), o.eps)
	})
	return 0, nil
}
func (o rmsNormOp) grad(in G.Nodes, _, dy *G.Node) (G.Nodes, error) {
	dx, err := apply(rmsNormDX{o.eps}, in[0], in[1], dy)
	if err != nil {
		return nil, err
	}
	dw, err := apply(rmsNormDW{o.eps}, in[0], dy)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dw}, nil
}

// invRMS is 1/sqrt(mean(x²)+eps), accumulated in float64.
func invRMS[T Float](x []T, eps float64) float64 {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	return 1 / math.Sqrt(ss/float64(len(x))+eps)
}

func rmsNormFwd[T Float](y, x, w []T, eps float64) {
	d := len(w)
	parallel(len(x)/d, d, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, yr := x[r*d:(r+1)*d], y[r*d:(r+1)*d]
			s := T(invRMS(xr, eps))
			for i := range xr {
				yr[i] = xr[i] * s * w[i]
			}
		}
	})
}

// rmsNormDX is dx = r·(w⊙dy) − x·r³/d·Σ(w⊙dy⊙x), r the inverse RMS (recomputed).
type rmsNormDX struct{ eps float64 }

func (o rmsNormDX) key() string                                 { return fmt.Sprintf("RMSNormDX{eps=%x}", math.Float64bits(o.eps)) }
func (rmsNormDX) signature() ([]arg, arg)                       { return []arg{matArg, vecArg, matArg}, matArg }
func (rmsNormDX) shape(in []tensor.Shape) (tensor.Shape, error) { return in[0].Clone(), nil }
func (o rmsNormDX) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		rmsNormBwdX(out.Float32s(), data[float32](in[0]), data[float32](in[1]), data[float32](in[2]), o.eps)
	}, func() {
		rmsNormBwdX(out.Float64s(), data[float64](in[0]), data[float64](in[1]), data[float64](in[2]), o.eps)
	})
	return 0, nil
}

func rmsNormBwdX[T Float](dx, x, w, dy []T, eps float64) {
	d := len(w)
	parallel(len(x)/d, d, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr, dyr, dxr := x[r*d:(r+1)*d], dy[r*d:(r+1)*d], dx[r*d:(r+1)*d]
			s := invRMS(xr, eps)
			var dot float64
			for i := range xr {
				dot += float64(w[i]) * float64(dyr[i]) * float64(xr[i])
			}
			c := dot * s * s * s / float64(d)
			for i := range xr {
				dxr[i] = T(s*float64(w[i])*float64(dyr[i]) - c*float64(xr[i]))
			}
		}
	})
}

// rmsNormDW is dw = Σ_rows dy⊙x·r.
type rmsNormDW struct{ eps float64 }

func (o rmsNormDW) key() string           { return fmt.Sprintf("RMSNormDW{eps=%x}", math.Float64bits(o.eps)) }
func (rmsNormDW) signature() ([]arg, arg) { return []arg{matArg, matArg}, vecArg }
func (rmsNormDW) shape(in []tensor.Shape) (tensor.Shape, error) {
	return tensor.Shape{in[0][1]}, nil
}
func (o rmsNormDW) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() {
		rmsNormBwdW(out.Float32s(), data[float32](in[0]), data[float32](in[1]), o.eps)
	}, func() {
		rmsNormBwdW(out.Float64s(), data[float64](in[0]), data[float64](in[1]), o.eps)
	})
	return 0, nil
}

func rmsNormBwdW[T Float](dw, x, dy []T, eps float64) {
	d := len(dw)
	rows := len(x) / d
	workers := max(1, min(runtime.GOMAXPROCS(0), rows*d>>14))
	partial := make([]float64, workers*d)
	chunk := (rows + workers - 1) / workers
	parallelItems(workers, func(_, w int) {
		acc := partial[w*d : (w+1)*d]
		for r := w * chunk; r < min(rows, (w+1)*chunk); r++ {
			xr, dyr := x[r*d:(r+1)*d], dy[r*d:(r+1)*d]
			s := invRMS(xr, eps)
			for i := range xr {
				acc[i] += float64(dyr[i]) * float64(xr[i]) * s
			}
		}
	})
	for i := range dw {
		var s float64
		for w := 0; w < workers; w++ {
			s += partial[w*d+i]
		}
		dw[i] = T(s)
	}
}
