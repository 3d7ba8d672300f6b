package ops

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// SoftmaxKL is the distillation loss: the mean over tokens of KL(softmax(teacher[n]) ‖
// softmax(logits[n])) for logits and teacher logits [N, V] and targets [N] (tensor.Int), whose
// only role is the mask: rows with a target < 0 are ignored, as in SoftmaxCrossEntropy. Rows
// are normalised by their own maxima. The gradient flows to logits only (the teacher is fixed).
func SoftmaxKL(logits, teacher, targets *G.Node) (*G.Node, error) {
	return apply(klOp{}, logits, teacher, targets)
}

type klOp struct{}

func (klOp) key() string             { return "SoftmaxKL" }
func (klOp) signature() ([]arg, arg) { return []arg{matArg, matArg, idsArg}, scalarArg }
func (klOp) diffWRT() []bool         { return []bool{true, false, false} }
func (klOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if !in[0].Eq(in[1]) {
		return nil, fmt.Errorf("SoftmaxKL: logits %v and teacher logits %v differ in shape", in[0], in[1])
	}
	if in[0][0] != in[2][0] {
		return nil, fmt.Errorf("SoftmaxKL: %d rows of logits but %d targets", in[0][0], in[2][0])
	}
	return tensor.ScalarShape(), nil
}
func (klOp) exec(_ *tensor.Dense, in []G.Value) (float64, error) {
	V := in[0].Shape()[1]
	if in[0].Dtype() == tensor.Float32 {
		return klKernel(data[float32](in[0]), data[float32](in[1]), ints(in[2]), V, 0, nil), nil
	}
	return klKernel(data[float64](in[0]), data[float64](in[1]), ints(in[2]), V, 0, nil), nil
}
func (klOp) grad(in G.Nodes, _, dLoss *G.Node) (G.Nodes, error) {
	dl, err := apply(klGrad{}, in[0], in[1], in[2], dLoss)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dl, nil, nil}, nil
}

// logSumExp is log Σ exp(row), shifted by the row's maximum (row-safe).
func logSumExp[T Float](row []T) float64 {
	m := math.Inf(-1)
	for _, v := range row {
		m = max(m, float64(v))
	}
	var z float64
	for _, v := range row {
		z += math.Exp(float64(v) - m)
	}
	return m + math.Log(z)
}

// logSoftmaxRow writes log softmax(row) into out (float64, so that p·(log p − log q) of nearly
// equal distributions keeps its digits).
func logSoftmaxRow[T Float](row []T, out []float64) {
	lz := logSumExp(row)
	for i, v := range row {
		out[i] = float64(v) - lz
	}
}

// klKernel returns the mean KL; when dl is non-nil it instead writes
// dl = g·(softmax(logits) − softmax(teacher))/count (zero rows for ignored targets).
func klKernel[T Float](logits, teacher []T, tg []int, V int, g float64, dl []T) float64 {
	count := ValidTargets(tg)
	if count == 0 {
		clear(dl)
		return 0
	}
	rows := len(tg)
	losses := make([]float64, rows)
	scale := g / float64(count)
	parallel(rows, 2*V, func(lo, hi int) {
		ls, lt := make([]float64, V), make([]float64, V)
		for n := lo; n < hi; n++ {
			if tg[n] < 0 {
				if dl != nil {
					clear(dl[n*V : (n+1)*V])
				}
				continue
			}
			logSoftmaxRow(logits[n*V:(n+1)*V], ls)
			logSoftmaxRow(teacher[n*V:(n+1)*V], lt)
			if dl == nil {
				var kl float64
				for i := range ls {
					kl += math.Exp(lt[i]) * (lt[i] - ls[i])
				}
				losses[n] = kl
				continue
			}
			out := dl[n*V : (n+1)*V]
			for i := range ls {
				out[i] = T(scale * (math.Exp(ls[i]) - math.Exp(lt[i])))
			}
		}
	})
	return meanOver(losses, count)
}

type klGrad struct{}

func (klGrad) key() string { return "SoftmaxKLGrad" }
func (klGrad) signature() ([]arg, arg) {
	return []arg{matArg, matArg, idsArg, scalarArg}, matArg
}
func (klGrad) shape(in []tensor.Shape) (tensor.Shape, error) { return in[0].Clone(), nil }
func (klGrad) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	V := in[0].Shape()[1]
	g := scalar(in[3])
	dispatch(out.Dtype(), func() {
		klKernel(data[float32](in[0]), data[float32](in[1]), ints(in[2]), V, g, out.Float32s())
	}, func() {
		klKernel(data[float64](in[0]), data[float64](in[1]), ints(in[2]), V, g, out.Float64s())
	})
	return 0, nil
}
