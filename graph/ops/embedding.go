package ops

import (
	"fmt"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Embedding gathers rows of table [V, d] for ids [N] (tensor.Int) into [N, d]. (gorgonia's
// ByIndices has a wrong gradient on the innermost axis; this op scatters exactly.)
func Embedding(table, ids *G.Node) (*G.Node, error) { return apply(embeddingOp{}, table, ids) }

type embeddingOp struct{}

func (embeddingOp) key() string             { return "Embedding" }
func (embeddingOp) signature() ([]arg, arg) { return []arg{matArg, idsArg}, matArg }
func (embeddingOp) diffWRT() []bool         { return []bool{true, false} }
func (embeddingOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	return tensor.Shape{in[1][0], in[0][1]}, nil
}
func (embeddingOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	V, d := in[0].Shape()[0], in[0].Shape()[1]
	ids := ints(in[1])
	for n, id := range ids {
		if id < 0 || id >= V {
			return 0, fmt.Errorf("Embedding: token id %d at index %d is outside [0, %d)", id, n, V)
		}
	}
	dispatch(out.Dtype(), func() {
		gather(out.Float32s(), data[float32](in[0]), ids, d)
	}, func() {
		gather(out.Float64s(), data[float64](in[0]), ids, d)
	})
	return 0, nil
}
func (embeddingOp) grad(in G.Nodes, _, dy *G.Node) (G.Nodes, error) {
	dt, err := apply(embeddingDW{vocab: in[0].Shape()[0]}, in[1], dy)
	if err != nil {
		return nil, err
	}
	return G.Nodes{dt, nil}, nil
}

func gather[T Float](out, table []T, ids []int, d int) {
	for n, id := range ids {
		copy(out[n*d:(n+1)*d], table[id*d:(id+1)*d])
	}
}

// embeddingDW scatter-adds dy [N, d] into a zeroed [V, d] table gradient.
type embeddingDW struct{ vocab int }

func (o embeddingDW) key() string           { return fmt.Sprintf("EmbeddingDW{V=%d}", o.vocab) }
func (embeddingDW) signature() ([]arg, arg) { return []arg{idsArg, matArg}, matArg }
func (o embeddingDW) shape(in []tensor.Shape) (tensor.Shape, error) {
	return tensor.Shape{o.vocab, in[1][1]}, nil
}
func (o embeddingDW) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	d := in[1].Shape()[1]
	dispatch(out.Dtype(), func() {
		scatterAdd(out.Float32s(), data[float32](in[1]), ints(in[0]), d)
	}, func() {
		scatterAdd(out.Float64s(), data[float64](in[1]), ints(in[0]), d)
	})
	return 0, nil
}

func scatterAdd[T Float](dt, dy []T, ids []int, d int) {
	clear(dt)
	for n, id := range ids {
		row, src := dt[id*d:(id+1)*d], dy[n*d:(n+1)*d]
		for i, v := range src {
			row[i] += v
		}
	}
}
