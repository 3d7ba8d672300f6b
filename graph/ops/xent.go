package ops

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// SoftmaxCrossEntropy is the mean over tokens of −log softmax(logits[n])[targets[n]] for logits
// [N, V] and targets [N] (tensor.Int). Targets < 0 are ignored (not counted in the mean). Each
// row is normalised by its own maximum (the stock SoftMax is not row-safe).
func SoftmaxCrossEntropy(logits, targets *G.Node) (*G.Node, error) {
	return apply(xentOp{}, logits, targets)
}

type xentOp struct{}

func (xentOp) key() string             { return "SoftmaxCrossEntropy" }
func (xentOp) signature() ([]arg, arg) { return []arg{matArg, idsArg}, scalarArg }
func (xentOp) diffWRT() []bool         { return []bool{true, false} }
func (xentOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if in[0][0] != in[1][0] {
		return nil, fmt.Errorf("SoftmaxCrossEntropy: %d rows of logits but %d targets", in[0][0], in[1][0])
	}
	return tensor.ScalarShape(), nil
}
func (xentOp) exec(_ *tensor.Dense, in []G.Value) (float64, error) {
	V := in[0].Shape()[1]
	tg := ints(in[1])
	for n, t := range tg {
		if t >= V {
			return 0, fmt.Errorf("SoftmaxCrossEntropy: target %d at index %d is outside [0, %d)", t, n, V)
		}
	}
	var loss float64
	if in[0].Dtype() == tensor.Float32 {
		loss = xentKernel(data[float32](in[0]), tg, V, 0, nil)
	} else {
		loss = xentKernel(data[float64](in[0]), tg, V, 0, nil)
	}
	return loss, nil
}
func (xentOp) grad(in G.Nodes, _, dLoss *G.Node) (G.Nodes, error) {
	dl, err := apply(xentGrad{}, in[0], in[1], dLoss)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dl, nil}, nil
}

// ValidTargets counts the targets that take part in the mean (those ≥ 0).
func ValidTargets(targets []int) int {
	n := 0
	for _, t := range targets {
		if t >= 0 {
			n++
		}
	}
	return n
}

// xentKernel returns the mean loss; when dl is non-nil it instead writes
// dl = g·(softmax − onehot)/count (zero rows for ignored targets).
func xentKernel[T Float](logits []T, tg []int, V int, g float64, dl []T) float64 {
	count := ValidTargets(tg)
	if count == 0 {
		clear(dl)
		return 0
	}
	rows := len(tg)
	losses := make([]float64, rows)
	scale := g / float64(count)
	parallel(rows, V, func(lo, hi int) {
		for n := lo; n < hi; n++ {
			row := logits[n*V : (n+1)*V]
			t := tg[n]
			if t < 0 {
				if dl != nil {
					clear(dl[n*V : (n+1)*V])
				}
				continue
			}
			lz := logSumExp(row)
			if dl == nil {
				losses[n] = lz - float64(row[t])
				continue
			}
			out := dl[n*V : (n+1)*V]
			for i, v := range row {
				out[i] = T(scale * math.Exp(float64(v)-lz))
			}
			out[t] = T(scale * (math.Exp(float64(row[t])-lz) - 1))
		}
	})
	return meanOver(losses, count)
}

// meanOver is Σ losses / count (rows that do not count hold 0).
func meanOver(losses []float64, count int) float64 {
	var s float64
	for _, l := range losses {
		s += l
	}
	return s / float64(count)
}

type xentGrad struct{}

func (xentGrad) key() string                                   { return "SoftmaxCrossEntropyGrad" }
func (xentGrad) signature() ([]arg, arg)                       { return []arg{matArg, idsArg, scalarArg}, matArg }
func (xentGrad) shape(in []tensor.Shape) (tensor.Shape, error) { return in[0].Clone(), nil }
func (xentGrad) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	V := in[0].Shape()[1]
	g := scalar(in[2])
	dispatch(out.Dtype(), func() {
		xentKernel(data[float32](in[0]), ints(in[1]), V, g, out.Float32s())
	}, func() {
		xentKernel(data[float64](in[0]), ints(in[1]), V, g, out.Float64s())
	})
	return 0, nil
}
