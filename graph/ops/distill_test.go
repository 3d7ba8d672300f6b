package ops

import (
	"math"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

func TestSoftmaxKL(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n, V   int
		ignore bool
	}{{"all rows", 4, 6, false}, {"ignored rows", 7, 5, true}} {
		t.Run(tc.name, func(t *testing.T) {
			rng := newRNG(9)
			tg := make([]int, tc.n)
			mask := make([]float64, tc.n*tc.V) // 1 on the rows that count
			valid := 0
			for i := range tg {
				tg[i] = rng.IntN(tc.V)
				if tc.ignore && i%3 == 1 {
					tg[i] = -1
					continue
				}
				for j := 0; j < tc.V; j++ {
					mask[i*tc.V+j] = 1
				}
				valid++
			}
			ins := []input{
				{name: "logits", shape: []int{tc.n, tc.V}, vals: randNormal(rng, tc.n*tc.V, 2), diff: true},
				{name: "teacher", shape: []int{tc.n, tc.V}, vals: randNormal(rng, tc.n*tc.V, 2)},
				{name: "targets", ids: tg},
			}
			build := func(in []*G.Node) (*G.Node, error) { return SoftmaxKL(in[0], in[1], in[2]) }
			got := forward(t, ins, build)
			// Σ p_t·(log p_t − log p_s) over the counted rows, from stock ops.
			want := forward(t, ins, func(in []*G.Node) (*G.Node, error) {
				ls := G.Must(G.LogSoftMax(in[0]))
				lt := G.Must(G.LogSoftMax(in[1]))
				pt := G.Must(G.Exp(lt))
				m := G.NewConstant(tensor.New(tensor.WithShape(tc.n, tc.V), tensor.WithBacking(mask)))
				s := G.Must(G.Sum(G.Must(G.HadamardProd(G.Must(G.HadamardProd(pt, G.Must(G.Sub(lt, ls)))), m))))
				return G.Mul(s, G.NewConstant(1/float64(valid)))
			})
			assertClose(t, "SoftmaxKL vs LogSoftMax composition", got, want, 1e-12)
			if got[0] <= 0 {
				t.Errorf("KL of different distributions is %v, want > 0", got[0])
			}
			checkGrads(t, rng, ins, build, fdTol)
		})
	}
	// A student equal to its teacher has zero loss, also for rows far apart (row-safe).
	same := []float64{0, 1, 2, 2000, 2001, 1999}
	ins := []input{{name: "logits", shape: []int{2, 3}, vals: same}, {name: "teacher", shape: []int{2, 3}, vals: append([]float64(nil), same...)}, {name: "t", ids: []int{0, 0}}}
	v := forward(t, ins, func(in []*G.Node) (*G.Node, error) { return SoftmaxKL(in[0], in[1], in[2]) })
	if math.IsNaN(v[0]) || math.Abs(v[0]) > 1e-12 {
		t.Errorf("KL of a distribution with itself = %v, want 0", v[0])
	}
}
