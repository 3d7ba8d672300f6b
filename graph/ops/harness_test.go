package ops

import (
	"math"
	"math/rand/v2"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// input is one input of an op under test: a float64 tensor, token ids, or a scalar.
type input struct {
	name   string
	shape  []int     // nil for a scalar
	vals   []float64 // float data (or the scalar in vals[0])
	ids    []int     // token ids (then vals is nil)
	diff   bool      // check the gradient with respect to this input
	sample int       // FD-check at most this many elements (0 = all)
}

func randVals(rng *rand.Rand, n int, lo, hi float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = lo + (hi-lo)*rng.Float64()
	}
	return v
}

func randNormal(rng *rand.Rand, n int, std float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = rng.NormFloat64() * std
	}
	return v
}

// graphOf builds the op over input nodes and a cost Σ R⊙y (R fixed random weights) so that
// every output element carries a distinct gradient.
type graphOf struct {
	g      *G.ExprGraph
	nodes  []*G.Node
	y      *G.Node
	cost   *G.Node
	costV  G.Value
	yV     G.Value
	grads  []G.Value
	m      G.VM
	inputs []input
	arena  *Arena // poisoning: every run reuses the previous run's NaN-filled outputs
}

func buildGraph(t *testing.T, rng *rand.Rand, ins []input, build func(in []*G.Node) (*G.Node, error), withGrad bool) *graphOf {
	t.Helper()
	g := G.NewGraph()
	gr := &graphOf{g: g, inputs: ins, arena: NewArena()}
	gr.arena.poison = true
	defer AttachArena(g, gr.arena)()
	for _, in := range ins {
		var n *G.Node
		switch {
		case in.ids != nil:
			n = G.NewVector(g, tensor.Int, G.WithName(in.name), G.WithShape(len(in.ids)),
				G.WithValue(tensor.New(tensor.WithShape(len(in.ids)), tensor.WithBacking(in.ids))))
		case in.shape == nil:
			n = G.NewScalar(g, tensor.Float64, G.WithName(in.name), G.WithValue(in.vals[0]))
		default:
			n = G.NewTensor(g, tensor.Float64, len(in.shape), G.WithName(in.name), G.WithShape(in.shape...),
				G.WithValue(tensor.New(tensor.WithShape(in.shape...), tensor.WithBacking(in.vals))))
		}
		gr.nodes = append(gr.nodes, n)
	}
	y, err := build(gr.nodes)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	gr.y = y
	if y.IsScalar() {
		gr.cost, err = G.Mul(y, G.NewConstant(1.7))
	} else {
		r := tensor.New(tensor.WithShape(y.Shape().Clone()...), tensor.WithBacking(randVals(rng, y.Shape().TotalSize(), -1, 1)))
		var p *G.Node
		if p, err = G.HadamardProd(y, G.NewConstant(r)); err == nil {
			gr.cost, err = G.Sum(p)
		}
	}
	if err != nil {
		t.Fatalf("cost: %v", err)
	}
	G.Read(gr.cost, &gr.costV)
	G.Read(y, &gr.yV)
	if withGrad {
		var wrt []*G.Node
		for i, in := range ins {
			if in.diff {
				wrt = append(wrt, gr.nodes[i])
			}
		}
		gs, err := G.Grad(gr.cost, wrt...)
		if err != nil {
			t.Fatalf("grad: %v", err)
		}
		gr.grads = make([]G.Value, len(gs))
		for i := range gs {
			G.Read(gs[i], &gr.grads[i])
		}
	}
	gr.m = G.NewTapeMachine(g)
	return gr
}

func (gr *graphOf) run(t *testing.T) float64 {
	t.Helper()
	gr.arena.Recycle()
	gr.m.Reset()
	if err := gr.m.RunAll(); err != nil {
		t.Fatalf("run: %v", err)
	}
	return scalar(gr.costV)
}

// checkGrads compares every differentiated input's analytic gradient with central differences
// of the cost (h = 1e-6 relative to scale), requiring relative error ≤ tol.
func checkGrads(t *testing.T, rng *rand.Rand, ins []input, build func(in []*G.Node) (*G.Node, error), tol float64) {
	t.Helper()
	gr := buildGraph(t, rng, ins, build, true)
	gr.run(t)
	gr.run(t) // on the first run's recycled, NaN-poisoned output tensors
	analytic := make([][]float64, len(gr.grads))
	for i, g := range gr.grads {
		analytic[i] = append([]float64(nil), g.Data().([]float64)...)
	}
	gi := 0
	for ii, in := range ins {
		if !in.diff {
			continue
		}
		an := analytic[gi]
		gi++
		idx := rng.Perm(len(in.vals))
		if in.sample > 0 && len(idx) > in.sample {
			idx = idx[:in.sample]
		}
		var num, den, worst float64
		for _, e := range idx {
			orig := in.vals[e]
			h := 1e-6 * max(1, math.Abs(orig))
			in.vals[e] = orig + h
			fp := gr.run(t)
			in.vals[e] = orig - h
			fm := gr.run(t)
			in.vals[e] = orig
			fd := (fp - fm) / (2 * h)
			d := math.Abs(fd - an[e])
			num += d * d
			den += an[e] * an[e]
			worst = max(worst, d/max(1e-3, math.Abs(an[e])+math.Abs(fd)))
			if math.IsNaN(an[e]) {
				t.Fatalf("%s: gradient element %d is NaN", in.name, e)
			}
		}
		rel := math.Sqrt(num / max(den, 1e-300))
		if den == 0 {
			t.Errorf("%s: analytic gradient is identically zero on the sampled elements; test is vacuous", in.name)
		}
		if rel > tol {
			t.Errorf("%s (input %d): FD relative error %.3g > %.1g (worst element %.3g)", in.name, ii, rel, tol, worst)
		} else {
			t.Logf("%s: FD relative error %.2g over %d elements", in.name, rel, len(idx))
		}
	}
}

// forward evaluates the op once and returns its output values.
func forward(t *testing.T, ins []input, build func(in []*G.Node) (*G.Node, error)) []float64 {
	t.Helper()
	gr := buildGraph(t, rand.New(rand.NewPCG(1, 1)), ins, build, false)
	gr.run(t)
	gr.run(t) // on the first run's recycled, NaN-poisoned output tensors
	switch v := gr.yV.Data().(type) {
	case []float64:
		return v
	case float64:
		return []float64{v}
	}
	t.Fatalf("unexpected output %T", gr.yV.Data())
	return nil
}

func maxAbsDiff(a, b []float64) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		d := math.Abs(a[i] - b[i])
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

func assertClose(t *testing.T, what string, got, want []float64, tol float64) {
	t.Helper()
	if d := maxAbsDiff(got, want); d > tol {
		t.Errorf("%s: max abs diff %.3g > %.1g", what, d, tol)
	}
}
