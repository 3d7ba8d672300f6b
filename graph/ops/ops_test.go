package ops

import (
	"math"
	"math/rand/v2"
	"testing"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

const fdTol = 1e-6

func newRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 7)) }

func TestLinear(t *testing.T) {
	for _, tc := range []struct{ n, in, out int }{{3, 4, 5}, {7, 6, 2}, {1, 3, 3}} {
		rng := newRNG(1)
		ins := []input{
			{name: "x", shape: []int{tc.n, tc.in}, vals: randNormal(rng, tc.n*tc.in, 1), diff: true},
			{name: "W", shape: []int{tc.out, tc.in}, vals: randNormal(rng, tc.out*tc.in, 1), diff: true},
		}
		got := forward(t, ins, func(in []*G.Node) (*G.Node, error) { return Linear(in[0], in[1]) })
		want := forward(t, ins, func(in []*G.Node) (*G.Node, error) {
			wt, err := G.Transpose(in[1])
			if err != nil {
				return nil, err
			}
			return G.Mul(in[0], wt)
		})
		assertClose(t, "Linear vs Mul(x, Wᵀ)", got, want, 1e-12)
		checkGrads(t, rng, ins, func(in []*G.Node) (*G.Node, error) { return Linear(in[0], in[1]) }, fdTol)
	}
}

func TestRMSNorm(t *testing.T) {
	for _, tc := range []struct{ n, d int }{{3, 8}, {5, 7}} {
		rng := newRNG(2)
		const eps = 1e-5
		ins := []input{
			{name: "x", shape: []int{tc.n, tc.d}, vals: randNormal(rng, tc.n*tc.d, 1), diff: true},
			{name: "w", shape: []int{tc.d}, vals: randVals(rng, tc.d, 0.5, 1.5), diff: true},
		}
		build := func(in []*G.Node) (*G.Node, error) { return RMSNorm(in[0], in[1], eps) }
		got := forward(t, ins, build)
		want := forward(t, ins, func(in []*G.Node) (*G.Node, error) {
			sq := G.Must(G.Square(in[0]))
			ms := G.Must(G.Mean(sq, 1))
			r := G.Must(G.Inverse(G.Must(G.Sqrt(G.Must(G.Add(ms, G.NewConstant(eps)))))))
			r2 := G.Must(G.Reshape(r, tensor.Shape{tc.n, 1}))
			y := G.Must(G.BroadcastHadamardProd(in[0], r2, nil, []byte{1}))
			w2 := G.Must(G.Reshape(in[1], tensor.Shape{1, tc.d}))
			return G.BroadcastHadamardProd(y, w2, nil, []byte{0})
		})
		assertClose(t, "RMSNorm vs composition", got, want, 1e-12)
		ref := make([]float64, len(got))
		model.RMSNorm(ref, ins[0].vals, ins[1].vals, eps)
		assertClose(t, "RMSNorm vs model.RMSNorm", got, ref, 0)
		checkGrads(t, rng, ins, build, fdTol)
	}
}

func TestSwiGLU(t *testing.T) {
	rng := newRNG(3)
	ins := []input{
		{name: "a", shape: []int{5, 7}, vals: randNormal(rng, 35, 2), diff: true},
		{name: "b", shape: []int{5, 7}, vals: randNormal(rng, 35, 1), diff: true},
	}
	build := func(in []*G.Node) (*G.Node, error) { return SwiGLU(in[0], in[1]) }
	got := forward(t, ins, build)
	want := forward(t, ins, func(in []*G.Node) (*G.Node, error) {
		return G.HadamardProd(G.Must(G.HadamardProd(in[0], G.Must(G.Sigmoid(in[0])))), in[1])
	})
	assertClose(t, "SwiGLU vs composition", got, want, 1e-14)
	checkGrads(t, rng, ins, build, fdTol)
}

func TestEmbedding(t *testing.T) {
	rng := newRNG(4)
	V, d := 6, 5
	ids := []int{3, 0, 5, 3, 1, 3, 2}
	ins := []input{
		{name: "table", shape: []int{V, d}, vals: randNormal(rng, V*d, 1), diff: true},
		{name: "ids", ids: ids},
	}
	build := func(in []*G.Node) (*G.Node, error) { return Embedding(in[0], in[1]) }
	got := forward(t, ins, build)
	want := forward(t, ins, func(in []*G.Node) (*G.Node, error) { return G.ByIndices(in[0], in[1], 0) })
	assertClose(t, "Embedding vs ByIndices axis 0", got, want, 0)
	checkGrads(t, rng, ins, build, fdTol)
}

func TestSoftmaxCrossEntropy(t *testing.T) {
	for _, tc := range []struct {
		n, V   int
		ignore bool
	}{{4, 6, false}, {7, 5, true}} {
		rng := newRNG(5)
		tg := make([]int, tc.n)
		onehot := make([]float64, tc.n*tc.V)
		valid := 0
		for i := range tg {
			tg[i] = rng.IntN(tc.V)
			if tc.ignore && i%3 == 1 {
				tg[i] = -1
				continue
			}
			onehot[i*tc.V+tg[i]] = 1
			valid++
		}
		ins := []input{
			{name: "logits", shape: []int{tc.n, tc.V}, vals: randNormal(rng, tc.n*tc.V, 2), diff: true},
			{name: "targets", ids: tg},
		}
		build := func(in []*G.Node) (*G.Node, error) { return SoftmaxCrossEntropy(in[0], in[1]) }
		got := forward(t, ins, build)
		want := forward(t, ins, func(in []*G.Node) (*G.Node, error) {
			ls := G.Must(G.LogSoftMax(in[0]))
			oh := G.NewConstant(tensor.New(tensor.WithShape(tc.n, tc.V), tensor.WithBacking(onehot)))
			s := G.Must(G.Sum(G.Must(G.HadamardProd(ls, oh))))
			return G.Mul(s, G.NewConstant(-1/float64(valid)))
		})
		assertClose(t, "SoftmaxCrossEntropy vs LogSoftMax composition", got, want, 1e-12)
		checkGrads(t, rng, ins, build, fdTol)
	}
	// Rows far apart (the stock SoftMax's NaN case) stay finite.
	big := []input{{name: "logits", shape: []int{2, 3}, vals: []float64{0, 1, 2, 2000, 2001, 1999}}, {name: "t", ids: []int{2, 0}}}
	v := forward(t, big, func(in []*G.Node) (*G.Node, error) { return SoftmaxCrossEntropy(in[0], in[1]) })
	if math.IsNaN(v[0]) || math.IsInf(v[0], 0) || v[0] <= 0 {
		t.Errorf("row-safe cross-entropy gave %v", v[0])
	}
}

func TestRoPE(t *testing.T) {
	for _, tc := range []struct {
		layout model.RoPELayout
		H, D   int
		B, T   int
		ch     int
		s      float64
	}{
		{model.RoPEInterleaved, 2, 8, 2, 5, 7, 0},
		{model.RoPEHalf, 3, 6, 1, 7, 5, 0},
		{model.RoPEHalf, 2, 8, 2, 3, 7, 0.4},
		{model.RoPEInterleaved, 1, 4, 3, 3, -1, 1},
	} {
		rng := newRNG(6)
		N, W := tc.B*tc.T, tc.H*tc.D
		spec := RoPESpec{Layout: tc.layout, Theta: 10000, Heads: tc.H, HeadD: tc.D, SeqLen: tc.T, Channel: tc.ch}
		ins := []input{
			{name: "x", shape: []int{N, W}, vals: randNormal(rng, N*W, 1), diff: true},
			{name: "s", vals: []float64{tc.s}},
		}
		build := func(in []*G.Node) (*G.Node, error) { return RoPE(in[0], in[1], spec) }
		got := forward(t, ins, build)
		// Reference: scale the channel, then model.Rotate row by row.
		ref := append([]float64(nil), ins[0].vals...)
		r := model.NewRoPE(model.Config{Dim: tc.D, NHeads: 1, RopeTheta: 10000, RoPE: tc.layout})
		for n := 0; n < N; n++ {
			row := ref[n*W : (n+1)*W]
			if tc.ch >= 0 {
				for h := 0; h < tc.H; h++ {
					row[h*tc.D+tc.ch] *= tc.s
				}
			}
			model.Rotate(r, row, n%tc.T)
		}
		assertClose(t, string(tc.layout)+" RoPE vs model.Rotate", got, ref, 0)
		checkGrads(t, rng, ins, build, fdTol)
	}
}

// dmcCase is one geometry of the DMC tests.
type dmcCase struct {
	B, T, Hq, Hkv, D, W int
}

var dmcCases = []dmcCase{
	{B: 2, T: 5, Hq: 4, Hkv: 2, D: 4, W: 3}, // GQA, odd length, window shorter than T
	{B: 1, T: 7, Hq: 2, Hkv: 2, D: 6, W: 0}, // MHA, unbounded
	{B: 2, T: 6, Hq: 3, Hkv: 1, D: 4, W: 12},
}

func (c dmcCase) spec() DMCSpec {
	return DMCSpec{QHeads: c.Hq, KVHeads: c.Hkv, HeadD: c.D, SeqLen: c.T, Channel: c.D - 1,
		DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1, Window: c.W}
}

func TestDMCDecideAndImportance(t *testing.T) {
	for _, c := range dmcCases {
		rng := newRNG(8)
		N := c.B * c.T
		s := c.spec()
		kv := randNormal(rng, N*c.Hkv*c.D, 1)
		qv := randNormal(rng, N*c.Hq*c.D, 1)
		for n := 0; n < N; n++ { // decision logits around 0 so both outcomes occur
			for h := 0; h < c.Hkv; h++ {
				kv[(n*c.Hkv+h)*c.D+s.Channel] = 5 + rng.NormFloat64()*0.3
			}
		}
		noise := make([]float64, N*c.Hkv)
		for i := range noise {
			noise[i] = 0.2 * rng.NormFloat64()
		}
		mc := model.Config{Dim: c.Hq * c.D, NHeads: c.Hq, NKVHeads: c.Hkv}
		cfg := dmc.Config{Window: c.W, DecisionChannel: -1, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1}
		for _, hard := range []bool{false, true} {
			hv := 0.0
			if hard {
				hv = 1
			}
			ins := []input{
				{name: "k", shape: []int{N, c.Hkv * c.D}, vals: kv, diff: !hard},
				{name: "noise", shape: []int{N, c.Hkv}, vals: noise},
				{name: "hard", vals: []float64{hv}},
			}
			build := func(in []*G.Node) (*G.Node, error) { return DMCDecide(in[0], in[1], in[2], s) }
			got := forward(t, ins, build)
			// Reference: dmc.Gates (logits, head-major per sequence) + Soft/HardDecisions.
			want := make([]float64, N*c.Hkv)
			for b := 0; b < c.B; b++ {
				q := append([]float64(nil), qv[b*c.T*c.Hq*c.D:(b+1)*c.T*c.Hq*c.D]...)
				k := append([]float64(nil), kv[b*c.T*c.Hkv*c.D:(b+1)*c.T*c.Hkv*c.D]...)
				logit, omega, alpha := make([]float64, c.T*c.Hkv), make([]float64, c.T*c.Hkv), make([]float64, c.T*c.Hkv)
				dmc.Gates(mc, cfg, q, k, logit, omega)
				nz := make([]float64, c.T*c.Hkv)
				for h := 0; h < c.Hkv; h++ {
					for tt := 0; tt < c.T; tt++ {
						nz[h*c.T+tt] = noise[(b*c.T+tt)*c.Hkv+h]
					}
				}
				if hard {
					dmc.HardDecisions(logit, c.T, alpha)
				} else {
					dmc.SoftDecisions(logit, nz, c.T, 0.1, alpha)
				}
				for h := 0; h < c.Hkv; h++ {
					for tt := 0; tt < c.T; tt++ {
						want[(b*c.T+tt)*c.Hkv+h] = alpha[h*c.T+tt]
					}
				}
			}
			assertClose(t, "DMCDecide vs dmc.Gates+Decisions", got, want, 1e-15)
			if !hard {
				checkGrads(t, rng, ins, build, fdTol)
			}
		}
		// Importance.
		ins := []input{{name: "q", shape: []int{N, c.Hq * c.D}, vals: qv, diff: true}}
		build := func(in []*G.Node) (*G.Node, error) { return DMCImportance(in[0], s) }
		got := forward(t, ins, build)
		want := make([]float64, N*c.Hkv)
		for b := 0; b < c.B; b++ {
			q := append([]float64(nil), qv[b*c.T*c.Hq*c.D:(b+1)*c.T*c.Hq*c.D]...)
			k := make([]float64, c.T*c.Hkv*c.D)
			logit, omega := make([]float64, c.T*c.Hkv), make([]float64, c.T*c.Hkv)
			dmc.Gates(mc, cfg, q, k, logit, omega)
			for h := 0; h < c.Hkv; h++ {
				for tt := 0; tt < c.T; tt++ {
					want[(b*c.T+tt)*c.Hkv+h] = omega[h*c.T+tt]
				}
			}
		}
		assertClose(t, "DMCImportance vs dmc.Gates", got, want, 0)
		checkGrads(t, rng, ins, build, fdTol)
	}
}

// naiveMerge is the spec formula with explicit products c_ij.
func naiveMerge(c dmcCase, x, alpha, omega []float64) []float64 {
	H, D := c.Hkv, c.D
	y := make([]float64, len(x))
	for b := 0; b < c.B; b++ {
		for h := 0; h < H; h++ {
			for i := 0; i < c.T; i++ {
				lo := 0
				if c.W > 0 {
					lo = max(0, i-c.W+1)
				}
				num := make([]float64, D)
				var den float64
				for j := lo; j <= i; j++ {
					cij := 1.0
					for m := j + 1; m <= i; m++ {
						cij *= alpha[(b*c.T+m)*H+h]
					}
					w := cij * omega[(b*c.T+j)*H+h]
					for d := 0; d < D; d++ {
						num[d] += w * x[((b*c.T+j)*H+h)*D+d]
					}
					den += w
				}
				for d := 0; d < D; d++ {
					y[((b*c.T+i)*H+h)*D+d] = num[d] / den
				}
			}
		}
	}
	return y
}

func TestDMCMerge(t *testing.T) {
	for _, c := range dmcCases {
		rng := newRNG(9)
		N := c.B * c.T
		ins := []input{
			{name: "x", shape: []int{N, c.Hkv * c.D}, vals: randNormal(rng, N*c.Hkv*c.D, 1), diff: true},
			{name: "alpha", shape: []int{N, c.Hkv}, vals: randVals(rng, N*c.Hkv, 0.05, 0.95), diff: true},
			{name: "omega", shape: []int{N, c.Hkv}, vals: randVals(rng, N*c.Hkv, 0.2, 1), diff: true},
		}
		s := c.spec()
		build := func(in []*G.Node) (*G.Node, error) { return DMCMerge(in[0], in[1], in[2], s) }
		got := forward(t, ins, build)
		assertClose(t, "DMCMerge vs naive formula", got, naiveMerge(c, ins[0].vals, ins[1].vals, ins[2].vals), 1e-13)
		checkGrads(t, rng, ins, build, fdTol)
	}
}

// naiveAttention is the spec's masked attention with explicit scores.
func naiveAttention(c dmcCase, q, k, v, alpha []float64) []float64 {
	Hq, Hkv, D := c.Hq, c.Hkv, c.D
	G := Hq / Hkv
	o := make([]float64, len(q))
	for b := 0; b < c.B; b++ {
		for h := 0; h < Hq; h++ {
			hk := h / G
			for i := 0; i < c.T; i++ {
				sc := make([]float64, i+1)
				m := math.Inf(-1)
				for j := 0; j <= i; j++ {
					var s float64
					for d := 0; d < D; d++ {
						s += q[((b*c.T+i)*Hq+h)*D+d] * k[((b*c.T+j)*Hkv+hk)*D+d]
					}
					s /= math.Sqrt(float64(D))
					if j < i && alpha != nil {
						s += math.Log(1 - alpha[(b*c.T+j+1)*Hkv+hk])
					}
					sc[j] = s
					m = max(m, s)
				}
				var z float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - m)
					z += sc[j]
				}
				for j := range sc {
					for d := 0; d < D; d++ {
						o[((b*c.T+i)*Hq+h)*D+d] += sc[j] / z * v[((b*c.T+j)*Hkv+hk)*D+d]
					}
				}
			}
		}
	}
	return o
}

func TestAttention(t *testing.T) {
	defer func(b int) { attnBlock = b }(attnBlock)
	for _, block := range []int{64, 2, 3} {
		attnBlock = block
		t.Logf("query block %d", block)
		testAttention(t)
	}
}

func testAttention(t *testing.T) {
	for _, c := range dmcCases {
		for _, masked := range []bool{false, true} {
			rng := newRNG(10)
			N := c.B * c.T
			ins := []input{
				{name: "q", shape: []int{N, c.Hq * c.D}, vals: randNormal(rng, N*c.Hq*c.D, 1), diff: true},
				{name: "k", shape: []int{N, c.Hkv * c.D}, vals: randNormal(rng, N*c.Hkv*c.D, 1), diff: true},
				{name: "v", shape: []int{N, c.Hkv * c.D}, vals: randNormal(rng, N*c.Hkv*c.D, 1), diff: true},
			}
			var alpha []float64
			if masked {
				alpha = randVals(rng, N*c.Hkv, 0.05, 0.9)
				ins = append(ins, input{name: "alpha", shape: []int{N, c.Hkv}, vals: alpha, diff: true})
			}
			spec := AttnSpec{QHeads: c.Hq, KVHeads: c.Hkv, HeadD: c.D, SeqLen: c.T, Masked: masked}
			build := func(in []*G.Node) (*G.Node, error) {
				var a *G.Node
				if masked {
					a = in[3]
				}
				return Attention(in[0], in[1], in[2], a, spec)
			}
			got := forward(t, ins, build)
			assertClose(t, "Attention vs naive", got, naiveAttention(c, ins[0].vals, ins[1].vals, ins[2].vals, alpha), 1e-13)
			checkGrads(t, rng, ins, build, fdTol)
		}
	}
}

// With α = 1 (hard merges) keys are hidden with weight exactly 0, outputs and gradients are
// finite, and the result equals attention over the surviving keys only.
func TestAttentionFullyMergedIsFinite(t *testing.T) {
	c := dmcCase{B: 1, T: 6, Hq: 2, Hkv: 1, D: 4}
	rng := newRNG(11)
	N := c.T
	alpha := []float64{0, 1, 1, 0, 1, 0}
	ins := []input{
		{name: "q", shape: []int{N, c.Hq * c.D}, vals: randNormal(rng, N*c.Hq*c.D, 1), diff: true},
		{name: "k", shape: []int{N, c.D}, vals: randNormal(rng, N*c.D, 1), diff: true},
		{name: "v", shape: []int{N, c.D}, vals: randNormal(rng, N*c.D, 1), diff: true},
		{name: "alpha", shape: []int{N, 1}, vals: alpha},
	}
	spec := AttnSpec{QHeads: c.Hq, KVHeads: 1, HeadD: c.D, SeqLen: c.T, Masked: true}
	build := func(in []*G.Node) (*G.Node, error) { return Attention(in[0], in[1], in[2], in[3], spec) }
	got := forward(t, ins, build)
	assertClose(t, "hard-masked attention vs naive", got, naiveAttention(c, ins[0].vals, ins[1].vals, ins[2].vals, alpha), 1e-13)
	gr := buildGraph(t, rng, []input{ins[0], ins[1], ins[2], {name: "alpha", shape: []int{N, 1}, vals: alpha, diff: true}}, build, true)
	gr.run(t)
	for i, g := range gr.grads {
		for _, x := range g.Data().([]float64) {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				t.Fatalf("gradient %d has a non-finite value", i)
			}
		}
	}
}

// A key hidden exactly (α_{j+1} = 1, mask −∞) had weight 0 in the forward, so α_{j+1} gets no
// gradient, even when the key's raw score is far above every visible one: the capped
// e^{s_ij − m_i} term it used to get, times the decision's recomputed α(1−α), made gradients of
// 1e20 and more on a 40M model.
func TestAttentionHiddenKeyGetsNoAlphaGradient(t *testing.T) {
	c := dmcCase{B: 1, T: 6, Hq: 2, Hkv: 1, D: 4}
	rng := newRNG(13)
	N := c.T
	alpha := []float64{0, 1, 0.3, 0, 1, 0}
	k := randNormal(rng, N*c.D, 1)
	for d := 0; d < c.D; d++ {
		k[0*c.D+d] *= 40 // keys 0 and 3 (hidden by α_1 = α_4 = 1) score far above the rest
		k[3*c.D+d] *= 40
	}
	ins := []input{
		{name: "q", shape: []int{N, c.Hq * c.D}, vals: randNormal(rng, N*c.Hq*c.D, 1), diff: true},
		{name: "k", shape: []int{N, c.D}, vals: k, diff: true},
		{name: "v", shape: []int{N, c.D}, vals: randNormal(rng, N*c.D, 1), diff: true},
		{name: "alpha", shape: []int{N, 1}, vals: alpha, diff: true},
	}
	spec := AttnSpec{QHeads: c.Hq, KVHeads: 1, HeadD: c.D, SeqLen: c.T, Masked: true}
	build := func(in []*G.Node) (*G.Node, error) { return Attention(in[0], in[1], in[2], in[3], spec) }
	gr := buildGraph(t, rng, ins, build, true)
	gr.run(t)
	dA := gr.grads[3].Data().([]float64)
	for _, n := range []int{1, 4} {
		if dA[n] != 0 {
			t.Errorf("dα[%d] = %g for a key hidden exactly, want 0", n, dA[n])
		}
	}
	if dA[2] == 0 {
		t.Error("dα[2] (a soft decision, 0.3) is 0: the visible keys lost their gradient")
	}
}

func TestDMCHardCountStraightThrough(t *testing.T) {
	B, T, H := 2, 3, 2
	alpha := []float64{0, 0.1, 0.7, 0.4, 0.9, 0.6, 0.2, 0.51, 0.49, 1, 0, 0.8}
	ins := []input{{name: "alpha", shape: []int{B * T, H}, vals: alpha, diff: true}}
	build := func(in []*G.Node) (*G.Node, error) { return DMCHardCount(in[0], T) }
	got := forward(t, ins, build)
	assertClose(t, "hard count", got, []float64{3, 3}, 0)
	// The gradient is the straight-through identity: dα[n,h] = dcount[b(n)].
	rng := newRNG(12)
	gr := buildGraph(t, rng, ins, build, true)
	gr.run(t)
	// cost = Σ_b R_b count_b, so dα = R_{b(n)}: equal within a sequence, non-zero.
	g := gr.grads[0].Data().([]float64)
	for n := 0; n < B*T; n++ {
		for h := 0; h < H; h++ {
			if g[n*H+h] != g[(n/T)*T*H] || g[n*H+h] == 0 {
				t.Fatalf("straight-through gradient %v is not constant per sequence", g)
			}
		}
	}
	if g[0] == g[T*H] {
		t.Fatalf("gradients of the two sequences should differ: %v", g)
	}
}

// The straight-through mode runs the hard decisions forward and the gradient of σ(a) backward:
// through the graph with a random upstream gradient R (buildGraph's cost Σ R·α), its gradient
// equals the soft mode's at τ = 1 with zero noise, and its output equals the hard mode's.
func TestDMCDecideStraightThrough(t *testing.T) {
	c := dmcCase{B: 2, T: 5, Hq: 4, Hkv: 2, D: 4}
	s := c.spec()
	rng := newRNG(21)
	N := c.B * c.T
	kv := randNormal(rng, N*c.Hkv*c.D, 1)
	for n := 0; n < N; n++ {
		for h := 0; h < c.Hkv; h++ {
			kv[(n*c.Hkv+h)*c.D+s.Channel] = s.DecisionOffset + 0.2*rng.NormFloat64()
		}
	}
	noise := randNormal(rng, N*c.Hkv, 1)
	zero := make([]float64, N*c.Hkv)
	run := func(mode DecisionMode, nz []float64, s DMCSpec) (alpha, dk []float64) {
		ins := []input{
			{name: "k", shape: []int{N, c.Hkv * c.D}, vals: kv, diff: true},
			{name: "noise", shape: []int{N, c.Hkv}, vals: nz},
			{name: "hard", vals: []float64{float64(mode)}},
		}
		build := func(in []*G.Node) (*G.Node, error) { return DMCDecide(in[0], in[1], in[2], s) }
		gr := buildGraph(t, newRNG(5), ins, build, true) // the same R in every run
		gr.run(t)
		return append([]float64(nil), gr.yV.Data().([]float64)...), append([]float64(nil), gr.grads[0].Data().([]float64)...)
	}
	unit := s
	unit.Temperature = 1
	hardA, _ := run(DecideHard, noise, s)
	_, softG := run(DecideSoft, zero, unit)
	stA, stG := run(DecideStraightThrough, noise, s)
	assertClose(t, "straight-through α vs hard α", stA, hardA, 0)
	assertClose(t, "straight-through dk vs dσ(a) (soft, τ = 1, no noise)", stG, softG, 0)
	nonZero := 0
	for _, g := range stG {
		if g != 0 {
			nonZero++
		}
	}
	if want := (N - c.B) * c.Hkv; nonZero != want { // every decision but t = 0 gets a gradient
		t.Fatalf("straight-through gradient has %d non-zero entries, want %d", nonZero, want)
	}
	for _, tc := range []struct {
		x    float64
		want DecisionMode
	}{{0, DecideSoft}, {1, DecideHard}, {2, DecideStraightThrough}, {-1, DecideHard}} {
		if got := DecisionModeOf(tc.x); got != tc.want {
			t.Errorf("DecisionModeOf(%g) = %d, want %d", tc.x, got, tc.want)
		}
	}
}

func TestDMCHeadCountStraightThrough(t *testing.T) {
	B, T, H := 2, 3, 2
	// rows n = b·T + t, columns h; > 0.5 counts (0.5 itself does not)
	alpha := []float64{0, 0.1, 0.7, 0.4, 0.9, 0.6, 0.2, 0.51, 0.49, 1, 0, 0.5}
	ins := []input{{name: "alpha", shape: []int{B * T, H}, vals: alpha, diff: true}}
	build := func(in []*G.Node) (*G.Node, error) { return DMCHeadCount(in[0], T) }
	got := forward(t, ins, build)
	assertClose(t, "head count", got, []float64{2, 1, 0, 2}, 0) // (b0,h0) (b0,h1) (b1,h0) (b1,h1)
	gr := buildGraph(t, newRNG(3), ins, build, true)
	gr.run(t)
	g := gr.grads[0].Data().([]float64)
	for n := 0; n < B*T; n++ {
		for h := 0; h < H; h++ {
			if want := g[(n/T)*T*H+h]; g[n*H+h] != want || want == 0 {
				t.Fatalf("straight-through gradient %v is not g[b·H + h]", g)
			}
		}
	}
	if g[0] == g[1] || g[0] == g[T*H] {
		t.Fatalf("gradients of different (sequence, head) counts should differ: %v", g)
	}
}

// Hash-consing must not merge ops that differ in a parameter.
func TestDistinctParamsAreDistinctNodes(t *testing.T) {
	g := G.NewGraph()
	x := G.NewMatrix(g, tensor.Float64, G.WithShape(4, 8), G.WithName("x"))
	s := G.NewScalar(g, tensor.Float64, G.WithName("s"))
	a := G.Must(RoPE(x, s, RoPESpec{Layout: model.RoPEHalf, Theta: 10000, Heads: 2, HeadD: 4, SeqLen: 4, Channel: 3}))
	b := G.Must(RoPE(x, s, RoPESpec{Layout: model.RoPEHalf, Theta: 10000, Heads: 2, HeadD: 4, SeqLen: 4, Channel: 2}))
	c := G.Must(RoPE(x, s, RoPESpec{Layout: model.RoPEInterleaved, Theta: 10000, Heads: 2, HeadD: 4, SeqLen: 4, Channel: 3}))
	d := G.Must(RoPE(x, s, RoPESpec{Layout: model.RoPEHalf, Theta: 10000, Heads: 2, HeadD: 4, SeqLen: 4, Channel: 3}))
	if a == b || a == c || b == c {
		t.Fatal("ops with different parameters were merged")
	}
	if a != d {
		t.Fatal("identical ops on the same input should be hash-consed into one node")
	}
	w := G.NewVector(g, tensor.Float64, G.WithShape(8), G.WithName("w"))
	if G.Must(RMSNorm(x, w, 1e-5)) == G.Must(RMSNorm(x, w, 1e-6)) {
		t.Fatal("RMSNorm eps not in the hash")
	}
}
