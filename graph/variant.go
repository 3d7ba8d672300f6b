package graph

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/dmc-project/dmc/graph/ops"
	"github.com/dmc-project/dmc/model"
)

// variant is one compiled graph: plain (vanilla / stage 1) or DMC.
type variant[T model.Float] struct {
	useDMC  bool
	g       *G.ExprGraph
	ids     *tensor.Dense // [B·T] ints
	targets *tensor.Dense
	noise   []*tensor.Dense // per layer [B·T, Hkv] (DMC only)
	// scalar inputs
	chScale, hard, alphaStar, crWeight *G.Node
	// distillation (Options.Teacher only): the teacher's logits [B·T, V] and the loss mix
	teacher         *tensor.Dense
	lmWeight, kdWgt *G.Node
	// outputs read by every run
	lossV, lmV, crV, alphaV, logitsV, kdV G.Value
	full, fwd                             G.VM
	// arena holds the fused ops' output tensors, reused by every run
	arena *ops.Arena
	// prog names the roles of the graph's nodes (Exec.Program)
	prog Program
}

func dtypeOf[T model.Float]() tensor.Dtype {
	var z T
	if _, ok := any(z).(float32); ok {
		return tensor.Float32
	}
	return tensor.Float64
}

// build constructs and compiles the graph of one variant.
func (e *Exec[T]) build(useDMC bool) (*variant[T], error) {
	c := e.cfg
	B, Tn := e.B, e.T
	N := B * Tn
	D, Hq, Hkv := c.HeadDim(), c.NHeads, c.NKVHeads
	dt := dtypeOf[T]()
	g := G.NewGraph()
	v := &variant[T]{useDMC: useDMC, g: g, arena: ops.NewArena()}
	defer ops.AttachArena(g, v.arena)()
	v.ids = tensor.New(tensor.WithShape(N), tensor.WithBacking(make([]int, N)))
	v.targets = tensor.New(tensor.WithShape(N), tensor.WithBacking(make([]int, N)))
	ids := G.NewVector(g, tensor.Int, G.WithShape(N), G.WithName("ids"), G.WithValue(v.ids))
	targets := G.NewVector(g, tensor.Int, G.WithShape(N), G.WithName("targets"), G.WithValue(v.targets))
	scalarIn := func(name string) *G.Node {
		return G.NewScalar(g, dt, G.WithName(name), G.WithValue(T(0)))
	}
	v.chScale, v.hard, v.alphaStar, v.crWeight = scalarIn("ch_scale"), scalarIn("hard"), scalarIn("alpha_star"), scalarIn("cr_weight")
	pr := &v.prog
	pr.Graph, pr.DMC, pr.B, pr.T = g, useDMC, B, Tn
	pr.IDs, pr.Targets = ids, targets
	pr.ChScale, pr.Hard, pr.AlphaStar, pr.CRWeight = v.chScale, v.hard, v.alphaStar, v.crWeight

	nodes := map[string]*G.Node{}
	var wrt G.Nodes
	for _, p := range e.params {
		n := G.NewTensor(g, dt, len(p.shape), G.WithShape(p.shape...), G.WithName(p.name), G.WithValue(p.value))
		nodes[p.name] = n
		wrt = append(wrt, n)
		pr.Params = append(pr.Params, n)
	}
	P := func(name string) *G.Node { return nodes[name] }

	var err error
	// must keeps the builder readable: the first error stops every later op.
	must := func(n *G.Node, e error) *G.Node {
		if err == nil && e != nil {
			err = e
		}
		return n
	}
	ropeQ := ops.RoPESpec{Layout: c.RoPE, Theta: c.RopeTheta, Heads: Hq, HeadD: D, SeqLen: Tn, Channel: e.ch}
	ropeK := ropeQ
	ropeK.Heads = Hkv
	ds := ops.DMCSpec{QHeads: Hq, KVHeads: Hkv, HeadD: D, SeqLen: Tn, Channel: e.ch,
		DecisionOffset: e.dc.DecisionOffset, ImportanceOffset: e.dc.ImportanceOffset,
		Temperature: e.dc.Temperature, Window: e.dc.Window}
	as := ops.AttnSpec{QHeads: Hq, KVHeads: Hkv, HeadD: D, SeqLen: Tn, Masked: useDMC}

	embed := P("model.embed_tokens.weight")
	x := must(ops.Embedding(embed, ids))
	var counts, capSum *G.Node
	capAlpha := 0.0 // α_cap = 1 − 1/HeadCRCap; 0: no per-head cap
	if e.opt.HeadCRCap > 0 {
		capAlpha = 1 - 1/e.opt.HeadCRCap
	}
	for l := 0; l < c.NLayers; l++ {
		pre := fmt.Sprintf("model.layers.%d.", l)
		xn := must(ops.RMSNorm(x, P(pre+"input_layernorm.weight"), c.NormEps))
		q := must(ops.Linear(xn, P(pre+"self_attn.q_proj.weight")))
		k := must(ops.Linear(xn, P(pre+"self_attn.k_proj.weight")))
		vv := must(ops.Linear(xn, P(pre+"self_attn.v_proj.weight")))
		var o *G.Node
		if useDMC {
			nt := tensor.New(tensor.WithShape(N, Hkv), tensor.WithBacking(make([]T, N*Hkv)))
			v.noise = append(v.noise, nt)
			noise := G.NewMatrix(g, dt, G.WithShape(N, Hkv), G.WithName(fmt.Sprintf("noise.%d", l)), G.WithValue(nt))
			pr.Noise = append(pr.Noise, noise)
			alpha := must(ops.DMCDecide(k, noise, v.hard, ds))
			omega := must(ops.DMCImportance(q, ds))
			km := must(ops.DMCMerge(k, alpha, omega, ds))
			vm := must(ops.DMCMerge(vv, alpha, omega, ds))
			qr := must(ops.RoPE(q, v.chScale, ropeQ))
			kr := must(ops.RoPE(km, v.chScale, ropeK))
			o = must(ops.Attention(qr, kr, vm, alpha, as))
			cnt := must(ops.DMCHardCount(alpha, Tn))
			if counts == nil {
				counts = cnt
			} else {
				counts = must(G.Add(counts, cnt))
			}
			if capAlpha > 0 {
				// this layer's heads: mean_{b,h} max(0, ᾱ_{b,h} − α_cap)
				rate := must(G.Mul(must(ops.DMCHeadCount(alpha, Tn)), G.NewConstant(T(1/float64(Tn)), G.WithName("inv_len"))))
				over := must(G.Mean(must(G.Rectify(must(G.Sub(rate, G.NewConstant(T(capAlpha), G.WithName("alpha_cap"))))))))
				if capSum == nil {
					capSum = over
				} else {
					capSum = must(G.Add(capSum, over))
				}
			}
		} else {
			qr := must(ops.RoPE(q, v.chScale, ropeQ))
			kr := must(ops.RoPE(k, v.chScale, ropeK))
			o = must(ops.Attention(qr, kr, vv, nil, as))
		}
		if err != nil {
			return nil, fmt.Errorf("graph: layer %d attention: %w", l, err)
		}
		x = must(G.Add(x, must(ops.Linear(o, P(pre+"self_attn.o_proj.weight")))))
		xn = must(ops.RMSNorm(x, P(pre+"post_attention_layernorm.weight"), c.NormEps))
		h := must(ops.SwiGLU(must(ops.Linear(xn, P(pre+"mlp.gate_proj.weight"))), must(ops.Linear(xn, P(pre+"mlp.up_proj.weight")))))
		x = must(G.Add(x, must(ops.Linear(h, P(pre+"mlp.down_proj.weight")))))
		if err != nil {
			return nil, fmt.Errorf("graph: layer %d: %w", l, err)
		}
	}
	xf := must(ops.RMSNorm(x, P("model.norm.weight"), c.NormEps))
	out := embed
	if !c.TieEmbeddings {
		out = P("lm_head.weight")
	}
	logits := must(ops.Linear(xf, out))
	lm := must(ops.SoftmaxCrossEntropy(logits, targets))
	loss := lm
	reads := G.Nodes{G.Read(lm, &v.lmV)}
	if e.teacher != nil {
		// L_LM = (1−β)·CE + β·KL(teacher ‖ model); β = 0 leaves plain cross-entropy.
		v.teacher = tensor.New(tensor.WithShape(N, c.VocabSize), tensor.WithBacking(make([]T, N*c.VocabSize)))
		tl := G.NewMatrix(g, dt, G.WithShape(N, c.VocabSize), G.WithName("teacher_logits"), G.WithValue(v.teacher))
		v.lmWeight, v.kdWgt = scalarIn("lm_weight"), scalarIn("kd_weight")
		kd := must(ops.SoftmaxKL(logits, tl, targets))
		pr.TeacherLogits, pr.LMWeight, pr.KDWeight, pr.KD = tl, v.lmWeight, v.kdWgt, kd
		loss = must(G.Add(must(G.Mul(v.lmWeight, lm)), must(G.Mul(v.kdWgt, kd))))
		reads = append(reads, G.Read(kd, &v.kdV))
	}
	if useDMC {
		// ᾱ_b = straight-through hard decisions averaged over layers, KV heads, positions;
		// L_CR = mean_b max(0, α* − ᾱ_b).
		abar := must(G.Mul(counts, G.NewConstant(T(1/float64(c.NLayers*Hkv*Tn)), G.WithName("inv_count"))))
		hinge := must(G.Rectify(must(G.Sub(v.alphaStar, abar))))
		lcr := must(G.Mean(hinge))
		if capSum != nil {
			lcr = must(G.Add(lcr, must(G.Mul(capSum, G.NewConstant(T(1/float64(c.NLayers)), G.WithName("inv_layers"))))))
		}
		loss = must(G.Add(loss, must(G.Mul(v.crWeight, lcr))))
		meanAlpha := must(G.Mean(abar))
		pr.CR, pr.MeanAlpha = lcr, meanAlpha
		reads = append(reads, G.Read(lcr, &v.crV), G.Read(meanAlpha, &v.alphaV))
	}
	if err != nil {
		return nil, fmt.Errorf("graph: head and loss: %w", err)
	}
	reads = append(reads, G.Read(loss, &v.lossV))
	if e.opt.KeepLogits {
		reads = append(reads, G.Read(logits, &v.logitsV))
	}
	pr.Loss, pr.LM, pr.Logits = loss, lm, logits
	v.fwd = G.NewTapeMachine(g.SubgraphRoots(reads...))
	if e.opt.ForwardOnly {
		return v, nil
	}
	grads, err := G.Grad(loss, wrt...)
	if err != nil {
		return nil, fmt.Errorf("graph: differentiate: %w", err)
	}
	pr.Grads = grads
	for i, p := range e.params {
		G.Read(grads[i], &p.gradV)
	}
	v.full = G.NewTapeMachine(g)
	return v, nil
}

func (v *variant[T]) run(e *Exec[T], b Batch, sc StepContext, backward bool) (Losses, error) {
	in, err := e.Inputs(b, sc)
	if err != nil {
		return Losses{}, err
	}
	copy(v.ids.Data().([]int), b.Inputs)
	copy(v.targets.Data().([]int), b.Targets)
	for _, s := range []struct {
		n *G.Node
		x float64
	}{{v.chScale, in.ChScale}, {v.hard, in.Hard}, {v.alphaStar, in.AlphaStar}, {v.crWeight, in.CRWeight}} {
		if err := G.Let(s.n, T(s.x)); err != nil {
			return Losses{}, err
		}
	}
	if e.teacher != nil {
		if in.Teacher {
			// The teacher is the original model: plain graph, full decision channel.
			if _, err := e.teacher.Forward(b, StepContext{ZeroOut: 1}); err != nil {
				return Losses{}, fmt.Errorf("graph: distillation teacher: %w", err)
			}
			copy(v.teacher.Data().([]T), e.teacher.Logits())
		}
		if err := G.Let(v.lmWeight, T(in.LMWeight)); err != nil {
			return Losses{}, err
		}
		if err := G.Let(v.kdWgt, T(in.KDWeight)); err != nil {
			return Losses{}, err
		}
	}
	if in.Noise {
		for l, nt := range v.noise {
			e.NoiseInto(nt.Data().([]T), sc, l)
		}
	}
	m := v.fwd
	if backward {
		m = v.full
	}
	v.arena.Recycle() // nothing reads the previous run's op outputs any more
	m.Reset()
	if err := m.RunAll(); err != nil {
		return Losses{}, fmt.Errorf("graph: run: %w", err)
	}
	read := func(x G.Value) float64 {
		if x == nil {
			return 0
		}
		switch d := x.Data().(type) {
		case float32:
			return float64(d)
		case float64:
			return d
		}
		return math.NaN()
	}
	l := Losses{Loss: read(v.lossV), LM: read(v.lmV), Tokens: ops.ValidTargets(b.Targets)}
	if v.useDMC {
		l.CR, l.MeanAlpha = read(v.crV), read(v.alphaV)
	}
	if sc.DistillWeight > 0 {
		l.KD = read(v.kdV)
	}
	if math.IsNaN(l.Loss) || math.IsInf(l.Loss, 0) {
		return l, ErrNotFinite
	}
	return l, nil
}
