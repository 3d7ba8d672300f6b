package device

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/graph/ops"
	"github.com/dmc-project/dmc/kernels"
)

// valKind is where a value lives.
type valKind int

const (
	valArena valKind = iota // planned in the schedule's arena
	valView                 // a view into another value (Unpack, Reshape)
	valParam                // a parameter's fp32 master
	valInput                // fed per run (tokens, noise, scalars, teacher logits)
	valConst                // a constant evaluated once at plan time
	valGrad                 // a parameter's gradient accumulator (written by its kernel)
)

// val is one value of a schedule: a node's output, an input, a bf16 shadow or a side buffer.
type val struct {
	node     *G.Node
	kind     valKind
	dt       kernels.DType
	n        int  // elements
	base     *val // valView: the viewed value; viewOff elements in
	viewOff  int
	param    int     // valParam: index into the params
	constV   float32 // valConst
	def      int     // index of the defining instruction (-1 for inputs)
	last     int     // index of the last instruction that reads it
	off      int     // valArena: offset in the arena of its dtype
	buf      devBuf  // the device buffer, bound at run time (exec.go)
	b16      *val    // bf16 shadow (GEMM operand), when one is needed
	b16Fused bool    // the producer writes the shadow itself (RMSNorm, SwiGLU; RoPE, the merge with attnShadows)
	// shadowOnly: nothing reads the fp32 value (only GEMMs and the attention, through the
	// shadow), so its producer writes the shadow alone and the value has no storage
	shadowOnly bool
}

// root is the value that owns the storage of v.
func (v *val) root() *val {
	for v.kind == valView {
		v = v.base
	}
	return v
}

// genOp is one of gorgonia's own element-wise ops.
type genOp int

const (
	genNone genOp = iota
	genEW
	genSum
	genRepeat
)

// instr is one node's computation.
type instr struct {
	node  *G.Node
	info  ops.OpInfo
	fused bool
	gen   genOp
	ew    kernels.EwOp
	in    []*val
	out   *val
	stats *val // attention: the forward's row maxima and log-sum-exps
	// attn16 (attention forward and backward, planOptions.attnShadows): q, k and v are read
	// through their bf16 shadows, all three
	attn16 bool
	fwd    *instr
	// grad ≥ 0: the node is the gradient of parameter grad; it is added into the accumulator
	// right after it is computed (direct: written into the accumulator by the kernel itself).
	grad   int
	direct bool
	// halves16 (SwiGLU's backward, planOptions.gradShadows): the views of the two halves of its
	// output [da | db] whose bf16 shadows its kernel writes.
	halves16 [2]*val
	// normDW (an RMSNorm dx, planOptions.pairNormGrads): the same norm's weight gradient,
	// which this instruction computes too, reading x and dy once; that instruction is a nop.
	normDW *instr
	// accum: an op folded with the sum it fed (foldSums) that adds its result into its
	// output's storage (a DMC decision or importance gradient its one channel per head, a
	// LinearDX with β = 1, an RMSNormDX); nop: that sum, which has nothing left to run.
	accum, nop bool
}

// schedule is one compiled run of a Program: forward only, or forward and backward.
type schedule struct {
	prog     *graph.Program
	backward bool
	instrs   []*instr
	vals     map[*G.Node]*val
	consts   []*val
	peak     [4]int // arena elements per dtype
	outputs  [5]*val
	ids      *val
	targets  *val
	noise    []*val
	scalars  map[*G.Node]int // scalar input → index in the scalar upload
	teacher  *val
	embedDW  bool
	bound    int // arena generation the views were resolved against
	noiseLen int
	// castAt[i+1] lists the values whose bf16 shadow is cast right after instruction i
	// (castAt[0]: before the first, for inputs).
	castAt   [][]*val
	fp32GEMM bool
	// gradShadows: planOptions.gradShadows
	gradShadows bool
	// shadowOnly: planOptions.shadowOnly
	shadowOnly bool
	// attnShadows: planOptions.attnShadows
	attnShadows bool
	// all lists every value (the nodes' and the recomputed copies), in a fixed order
	all []*val
	// recomputed counts the instructions run again by rematerialisation
	recomputed int
}

var scalarOrder = func(p *graph.Program) []*G.Node {
	return []*G.Node{p.ChScale, p.Hard, p.AlphaStar, p.CRWeight, p.LMWeight, p.KDWeight}
}

func size(n *G.Node) int {
	s := n.Shape()
	if len(s) == 0 {
		return 1
	}
	return max(1, s.TotalSize())
}

// children are n's inputs in argument order.
func children(n *G.Node) []*G.Node {
	it := n.Graph().From(n.ID())
	out := make([]*G.Node, 0, it.Len())
	for it.Next() {
		out = append(out, it.Node().(*G.Node))
	}
	return out
}

// order lists the nodes reachable from roots, children before parents (depth-first, in the
// order of the roots and of each node's children: deterministic).
func order(roots []*G.Node) []*G.Node {
	seen := map[*G.Node]bool{}
	var out []*G.Node
	var visit func(n *G.Node)
	visit = func(n *G.Node) {
		if seen[n] {
			return
		}
		seen[n] = true
		for _, c := range children(n) {
			visit(c)
		}
		out = append(out, n)
	}
	for _, r := range roots {
		if r != nil {
			visit(r)
		}
	}
	return out
}

// compile plans one schedule of p: instruction order, views, liveness and the arena layout.
func compile(p *graph.Program, backward bool, keepLogits bool) (*schedule, error) {
	return compileWith(p, backward, keepLogits, false, nil)
}

// compileWith plans a schedule; fp32GEMM keeps GEMM operands in fp32 (no bf16 shadows), and
// the gradients of frozen parameters are not computed at all.
func compileWith(p *graph.Program, backward, keepLogits, fp32GEMM bool, frozen []bool) (*schedule, error) {
	return compileOpts(p, planOptions{backward: backward, keepLogits: keepLogits, fp32GEMM: fp32GEMM, frozen: frozen})
}

// planOptions are compileOpts' choices.
type planOptions struct {
	backward, keepLogits, fp32GEMM bool
	frozen                         []bool
	// recompute keeps only each layer's input through the forward pass and runs the layer's
	// forward again just before its backward needs it (activation rematerialisation).
	recompute bool
	// foldSums folds gradient sums into the ops that feed them (foldSums).
	foldSums bool
	// gradShadows has the gradient sums, SwiGLU's backward and RMSNorm's dx (also where a sum
	// is folded into it) write the bf16 shadows of their outputs themselves (as RMSNorm and
	// SwiGLU do), instead of a cast after them.
	gradShadows bool
	// shadowOnly lets a GEMM operand's fp32 value die at its last other reader (the GEMMs
	// read the bf16 shadows) and its producer write the shadow alone where nothing else
	// reads the fp32 value; false (the executor's default until DMC_SHADOW_ONLY=1 has run on
	// a GPU) keeps it alive until the GEMM, as if the GEMM read it.
	shadowOnly bool
	// pairNormGrads has each RMSNorm dx also write its weight gradient (pairNormGrads).
	pairNormGrads bool
	// attnShadows gives the tensor-core attention's q, k and v bf16 shadows, cast once after
	// their producers and read by the forward and the backward (which otherwise cast them
	// each), so that their fp32 values die there when nothing else reads them (with or
	// without shadowOnly: the attention reads no fp32 q, k or v then).
	attnShadows bool
}

// PlanSwitches are the executor's schedule switches (planOptions), which the DMC_* environment
// variables set for a process; Options.Switches sets them for one Model, so that a test can
// compare two schedules in one process.
type PlanSwitches struct {
	FoldSums      bool // DMC_FOLD_SUMS (on unless 0)
	GradShadows   bool // DMC_GRAD_SHADOWS=1
	ShadowOnly    bool // DMC_SHADOW_ONLY=1
	PairNormGrads bool // DMC_NORM_GRADS=paired
	AttnShadows   bool // DMC_ATTN_SHADOWS=1
}

func (w PlanSwitches) apply(o *planOptions) {
	o.foldSums, o.gradShadows, o.shadowOnly, o.pairNormGrads, o.attnShadows = w.FoldSums, w.GradShadows, w.ShadowOnly, w.PairNormGrads, w.AttnShadows
}

func compileOpts(p *graph.Program, o planOptions) (*schedule, error) {
	backward, keepLogits, fp32GEMM, frozen := o.backward, o.keepLogits, o.fp32GEMM, o.frozen
	s := &schedule{prog: p, backward: backward, vals: map[*G.Node]*val{}, scalars: map[*G.Node]int{}}
	s.outputs = [5]*val{}
	outs := []*G.Node{p.Loss, p.LM, p.KD, p.CR, p.MeanAlpha}
	roots := append([]*G.Node{}, outs...)
	if keepLogits {
		roots = append(roots, p.Logits)
	}
	gradOf := map[*G.Node]int{}
	if backward {
		if p.Grads == nil {
			return nil, fmt.Errorf("device: the program has no gradients (a forward-only graph)")
		}
		// Gradients in reverse parameter order (the head and the last layer first): the
		// depth-first order then runs each weight gradient as soon as its output gradient
		// exists, layer by layer down the network, so activations and output gradients die
		// early (in parameter order every weight gradient would wait for the whole chain).
		for i := len(p.Grads) - 1; i >= 0; i-- {
			g := p.Grads[i]
			if frozen != nil && frozen[i] {
				continue
			}
			if _, dup := gradOf[g]; dup {
				return nil, fmt.Errorf("device: two parameters share the gradient node %v", g)
			}
			gradOf[g] = i
			roots = append(roots, g)
		}
	}
	paramIdx := map[*G.Node]int{}
	for i, n := range p.Params {
		paramIdx[n] = i
	}
	noiseIdx := map[*G.Node]int{}
	for i, n := range p.Noise {
		noiseIdx[n] = i
	}
	for i, n := range scalarOrder(p) {
		if n != nil {
			s.scalars[n] = i
		}
	}
	nodes := order(roots)
	consumers := map[*G.Node]int{}
	for _, n := range nodes {
		for _, c := range children(n) {
			consumers[c]++
		}
	}
	for _, n := range nodes {
		v := &val{node: n, dt: kernels.F32, n: size(n), def: -1, last: -1}
		s.vals[n] = v
		op := n.Op()
		if op == nil {
			if err := s.input(v, paramIdx, noiseIdx); err != nil {
				return nil, err
			}
			continue
		}
		if c, ok := hostConstant(n); ok {
			v.kind, v.constV = valConst, c
			s.consts = append(s.consts, v)
			continue
		}
		in := make([]*val, len(children(n)))
		for i, c := range children(n) {
			in[i] = s.vals[c]
		}
		ins := &instr{node: n, in: in, out: v, grad: -1}
		if info, ok := ops.Describe(op); ok {
			ins.info, ins.fused = info, true
			switch info.Kind {
			case ops.KindUnpack:
				v.kind, v.base, v.viewOff, v.def = valView, in[0], info.Offset, in[0].root().def
				continue
			case ops.KindSoftmaxCE, ops.KindSoftmaxKL:
				v.n = 2 // the kernels also write the token count
			}
		} else if err := generic(ins, op); err != nil {
			return nil, fmt.Errorf("device: node %q: %w", n.Name(), err)
		} else if ins.gen == genNone {
			v.kind, v.base, v.def = valView, in[0], in[0].root().def // reshape
			continue
		}
		if g, ok := gradOf[n]; ok {
			ins.grad = g
			k := ins.info.Kind
			ins.direct = ins.fused && consumers[n] == 0 && (k == ops.KindLinearDW || k == ops.KindRMSNormDW || k == ops.KindEmbeddingDW)
			if ins.direct {
				v.kind, v.param = valGrad, g
			}
		}
		v.def = len(s.instrs)
		s.instrs = append(s.instrs, ins)
	}
	for i, o := range outs {
		if o != nil {
			s.outputs[i] = s.vals[o] // Loss and LM may be one node
		}
	}
	s.fp32GEMM, s.gradShadows, s.attnShadows = fp32GEMM, o.gradShadows, o.attnShadows
	for _, v := range s.vals {
		s.all = append(s.all, v)
	}
	sortVals(s.all)
	if o.recompute && backward {
		if err := s.rematerialise(); err != nil {
			return nil, err
		}
	}
	if err := s.link(); err != nil {
		return nil, err
	}
	if o.foldSums && backward {
		s.foldSums()
	}
	if o.pairNormGrads && backward {
		s.pairNormGrads()
	}
	s.shadowOnly = o.shadowOnly
	s.plan(keepLogits)
	return s, nil
}

// pairNormGrads has each RMSNorm dx instruction also compute the weight gradient of the same
// norm (the RMSNormDW of the same x and dy, written straight into its accumulator, which
// nothing reads before the update), so that x and dy are read once; the weight gradient's
// instruction no longer runs. Nothing writes x or dy between the two (they are values, and a
// folded sum writes only storage that nothing reads after it), so the gradient is the same.
func (s *schedule) pairNormGrads() {
	dxOf := map[[2]*val]*instr{} // (x, dy) → the RMSNorm dx reading them
	for _, dx := range s.instrs {
		if dx.fused && dx.info.Kind == ops.KindRMSNormDX && !dx.nop {
			dxOf[[2]*val{dx.in[0], dx.in[2]}] = dx
		}
	}
	for _, dw := range s.instrs {
		if !dw.fused || dw.info.Kind != ops.KindRMSNormDW || !dw.direct || dw.nop {
			continue
		}
		if dx := dxOf[[2]*val{dw.in[0], dw.in[1]}]; dx != nil && dx.normDW == nil && dx.info.Eps == dw.info.Eps {
			dx.normDW, dw.nop = dw, true
		}
	}
}

// region is where a value's elements lie in its root's storage.
func region(v *val) (root *val, off int) {
	for v.kind == valView {
		off += v.viewOff
		v = v.base
	}
	return v, off
}

// foldable are the ops that can add their result into existing storage: the DMC decision and
// importance gradients (zero but for the decision channel of every head, so the fold also
// saves writing the zeros), LinearDX (β = 1 in its GEMM) and RMSNormDX.
func foldable(k ops.Kind) bool {
	return k == ops.KindDMCDecideGrad || k == ops.KindDMCImportanceGrad || k == ops.KindLinearDX || k == ops.KindRMSNormDX
}

// foldSums folds each gradient sum x + a, where a comes from a foldable op and is read by
// nothing else, into that op: the op adds its result into x's storage in place (instr.accum)
// and the sum becomes a view of x, which saves the sum's pass over memory (and for the gate
// gradients a gradient-sized write of zeros). It folds only where no instruction reads x's
// elements from the op on but the sum itself, so the in-place update is invisible.
func (s *schedule) foldSums() {
	type read struct {
		ins, off, n int
	}
	reads := map[*val][]read{} // by root: who reads which elements
	note := func(i int, v *val) {
		r, off := region(v)
		reads[r] = append(reads[r], read{i, off, v.n})
	}
	for i, ins := range s.instrs {
		for _, v := range ins.in {
			note(i, v)
		}
		if ins.fwd != nil {
			note(i, ins.fwd.out)
		}
	}
	for _, o := range s.outputs {
		if o != nil {
			note(len(s.instrs), o)
		}
	}
	for i, sum := range s.instrs {
		if sum.fused || sum.gen != genEW || sum.ew != kernels.EwAdd || len(sum.in) != 2 || sum.grad >= 0 || sum.out.kind != valArena {
			continue
		}
		for j, a := range sum.in {
			x := sum.in[1-j]
			if a.kind != valArena || a.def < 0 || a.n != x.n || a.n != sum.out.n || a.b16 != nil {
				continue
			}
			op := s.instrs[a.def]
			if !op.fused || op.accum || op.grad >= 0 || !foldable(op.info.Kind) {
				continue
			}
			if len(reads[a]) != 1 { // the sum alone
				continue
			}
			root, off := region(x)
			if root.kind != valArena || root.def >= a.def {
				continue
			}
			clear := true
			for _, rd := range reads[root] {
				if rd.ins >= a.def && rd.ins != i && rd.off < off+x.n && off < rd.off+rd.n {
					clear = false
					break
				}
			}
			if !clear {
				continue
			}
			// The sum's value keeps its index (its bf16 shadow is cast after it, so after the
			// op) and now names x's elements; the op writes there; a is left unused.
			y := sum.out
			y.kind, y.base, y.viewOff = valView, x, 0
			// The sum no longer runs: its shadow is cast after it, or written by the op
			// itself (gradShadows, RMSNormDX), which then is where the shadow is born.
			y.b16Fused = false
			if s.gradShadows && y.b16 != nil && op.info.Kind == ops.KindRMSNormDX {
				y.b16Fused, y.b16.def = true, a.def
			}
			op.out, op.accum = y, true
			sum.nop, sum.in, sum.out = true, nil, a
			for _, rd := range reads[y] { // y's readers now read x's elements
				reads[root] = append(reads[root], read{rd.ins, off + rd.off, rd.n})
			}
			delete(reads, y)
			break
		}
	}
}

// input classifies an input node.
func (s *schedule) input(v *val, paramIdx, noiseIdx map[*G.Node]int) error {
	n, p := v.node, s.prog
	v.kind = valInput
	if i, ok := paramIdx[n]; ok {
		v.kind, v.param = valParam, i
		return nil
	}
	switch {
	case n == p.IDs:
		v.dt, s.ids = kernels.I32, v
	case n == p.Targets:
		v.dt, s.targets = kernels.I32, v
	case n == p.TeacherLogits:
		s.teacher = v
	default:
		if i, ok := noiseIdx[n]; ok {
			for len(s.noise) <= i {
				s.noise = append(s.noise, nil)
			}
			s.noise[i] = v
			s.noiseLen = v.n
			return nil
		}
		if _, ok := s.scalars[n]; ok {
			return nil
		}
		return fmt.Errorf("device: the graph has an input %q the executor does not know", n.Name())
	}
	return nil
}

// hostConstant evaluates constants and shape-only ops (gorgonia's SizeOf) once on the host.
func hostConstant(n *G.Node) (float32, bool) {
	t := fmt.Sprintf("%T", n.Op())
	if t != "gorgonia.constantScalar" && t != "gorgonia.sizeOp" {
		return 0, false
	}
	var in []G.Value
	for _, c := range children(n) {
		if size(c) > 1<<20 {
			return 0, false
		}
		shp := c.Shape()
		if len(shp) == 0 {
			in = append(in, G.NewF32(0))
		} else {
			in = append(in, tensor.New(tensor.Of(tensor.Float32), tensor.WithShape(shp...)))
		}
	}
	v, err := n.Op().Do(in...)
	if err != nil {
		return 0, false
	}
	switch x := v.Data().(type) {
	case float32:
		return x, true
	case float64:
		return float32(x), true
	case int:
		return float32(x), true
	}
	return 0, false
}

// generic maps one of gorgonia's ops; genNone (with no error) means a reshape (a view).
func generic(ins *instr, op G.Op) error {
	t, str := fmt.Sprintf("%T", op), op.String()
	f := strings.Fields(str)
	switch t {
	case "gorgonia.elemBinOp":
		sym := map[string]kernels.EwOp{"+": kernels.EwAdd, "-": kernels.EwSub, "⊙": kernels.EwMul, "÷": kernels.EwDiv, ">=": kernels.EwGE}
		e, ok := sym[f[0]]
		if !ok || (e == kernels.EwGE && (len(f) < 2 || f[1] != "true")) {
			return fmt.Errorf("element-wise op %q is not supported on the GPU", str)
		}
		ins.gen, ins.ew = genEW, e
	case "gorgonia.elemUnaryOp":
		if f[0] != "neg" {
			return fmt.Errorf("unary op %q is not supported on the GPU", str)
		}
		ins.gen, ins.ew = genEW, kernels.EwNeg
	case "gorgonia.sumOp":
		if len(ins.in[0].node.Shape()) > 1 || size(ins.node) != 1 {
			return fmt.Errorf("sum %q over shape %v is not supported on the GPU (only full sums of vectors)", str, ins.in[0].node.Shape())
		}
		ins.gen = genSum
	case "*gorgonia.repeatOp":
		if ins.in[0].n != 1 {
			return fmt.Errorf("repeat %q of a non-scalar is not supported on the GPU", str)
		}
		ins.gen = genRepeat
	case "gorgonia.reshapeOp":
		ins.gen = genNone
	default:
		return fmt.Errorf("op %s (%s) is not supported on the GPU", str, t)
	}
	return nil
}

// link pairs attention backward nodes with their forwards and marks GEMM operands for shadows.
func (s *schedule) link() error {
	fwds := map[[3]*val]*instr{}
	for _, ins := range s.instrs {
		if !ins.fused {
			continue
		}
		switch ins.info.Kind {
		case ops.KindAttention:
			ins.stats = &val{kind: valArena, dt: kernels.F32, n: 2 * ins.in[0].n / ins.info.Attn.HeadD, def: ins.out.def, last: ins.out.def}
			fwds[[3]*val{ins.in[0], ins.in[1], ins.in[2]}] = ins
			if s.attnShadows && kernels.TensorCoreAttention(ins.info.Attn.HeadD) {
				for _, v := range ins.in[:3] {
					s.shadow(v)
				}
				ins.attn16 = ins.in[0].b16 != nil && ins.in[1].b16 != nil && ins.in[2].b16 != nil
			}
		case ops.KindAttentionGrad:
			f, ok := fwds[[3]*val{ins.in[0], ins.in[1], ins.in[2]}]
			if !ok {
				return fmt.Errorf("device: attention backward %q has no forward in the schedule", ins.node.Name())
			}
			ins.fwd, ins.attn16 = f, f.attn16
		case ops.KindLinear:
			s.shadow(ins.in[0])
			s.shadow(ins.in[1])
		case ops.KindLinearDX:
			s.shadow(ins.in[0])
			s.shadow(ins.in[1])
		case ops.KindLinearDW:
			s.shadow(ins.in[0])
			s.shadow(ins.in[1])
		}
	}
	return nil
}

// shadow gives v a bf16 copy (parameters have theirs already).
func (s *schedule) shadow(v *val) {
	if v.kind == valParam || v.b16 != nil || s.fp32GEMM {
		return
	}
	v.b16 = &val{node: v.node, kind: valArena, dt: kernels.BF16, n: v.n, def: v.def, last: v.def}
	if v.def < 0 {
		return
	}
	p := s.instrs[v.def]
	switch {
	case p.fused && (p.info.Kind == ops.KindRMSNorm || p.info.Kind == ops.KindSwiGLU) && v == p.out:
		v.b16Fused = true
	case s.attnShadows && attentionOperandProducer(p) && v == p.out:
		v.b16Fused = true // an attention operand (attnShadows), written by RoPE or the merge itself
	case !s.gradShadows:
	case p.fused && p.info.Kind == ops.KindSwiGLUGrad && v.kind == valView && v.base == p.out && 2*v.n == p.out.n && v.viewOff%v.n == 0 &&
		p.halves16[v.viewOff/v.n] == nil: // a second view of the same half is cast instead
		v.b16Fused = true
		p.halves16[v.viewOff/v.n] = v
	case sameShapeAdd(p) && v == p.out, p.fused && (p.info.Kind == ops.KindRMSNormDX || p.info.Kind == ops.KindSoftmaxCEGrad) && v == p.out,
		p.fused && p.info.Kind == ops.KindRoPE && p.info.Inverse && v == p.out: // RoPE's backward: a projection's output gradient
		v.b16Fused = true
	}
}

// shadowOnlyCapable are the ops whose kernels write a bf16 shadow without the fp32 output.
func shadowOnlyCapable(k ops.Kind) bool {
	return k == ops.KindRMSNorm || k == ops.KindSwiGLU || k == ops.KindRoPE || k == ops.KindSoftmaxCEGrad || k == ops.KindDMCMerge
}

// readsShadow reports whether ins reads its input k, v, through v's bf16 shadow: a GEMM's
// two operands, and the tensor-core attention's q, k and v where the plan gave them shadows.
func readsShadow(ins *instr, k int, v *val) bool {
	if !ins.fused || v.kind == valParam || v.b16 == nil {
		return false
	}
	switch ins.info.Kind {
	case ops.KindLinear, ops.KindLinearDX, ops.KindLinearDW:
		return k < 2
	case ops.KindAttention, ops.KindAttentionGrad:
		return k < 3 && ins.attn16 // not a shadow some other reader gave one of them
	}
	return false
}

func isAttention(ins *instr) bool {
	return ins.fused && (ins.info.Kind == ops.KindAttention || ins.info.Kind == ops.KindAttentionGrad)
}

// attentionOperandProducer reports whether ins is one of the ops that write the attention's
// q, k or v shadows themselves under attnShadows (RoPE forward, the DMC merge).
func attentionOperandProducer(ins *instr) bool {
	return ins.fused && (ins.info.Kind == ops.KindRoPE && !ins.info.Inverse || ins.info.Kind == ops.KindDMCMerge)
}

// readsShadowOnly reports whether an op that reads v through its shadow (readsShadow) reads
// nothing of its fp32 storage: v owns its storage (a view's base may be written into by a
// folded sum).
func readsShadowOnly(v *val) bool {
	return v.kind == valArena && v.b16 != nil
}

// sameShapeAdd reports whether ins is a gradient sum of two tensors of its output's size (no
// broadcast scalar), the sum that kernels.TrainDevice.Add runs.
func sameShapeAdd(ins *instr) bool {
	return !ins.fused && ins.gen == genEW && ins.ew == kernels.EwAdd && len(ins.in) == 2 && ins.in[0].n == ins.out.n && ins.in[1].n == ins.out.n
}

// plan computes liveness and places every arena value with a first-fit allocator.
func (s *schedule) plan(keepLogits bool) {
	end := len(s.instrs)
	use := func(v *val, i int) {
		r := v.root()
		r.last = max(r.last, i)
		if v.b16 != nil {
			v.b16.last = max(v.b16.last, i)
		}
	}
	for i, ins := range s.instrs {
		if ins.nop {
			continue // a folded sum or a paired weight gradient: it reads nothing
		}
		for k, v := range ins.in {
			if readsShadow(ins, k, v) && readsShadowOnly(v) && (s.shadowOnly || isAttention(ins)) {
				// The op reads the shadow alone, so the fp32 value (e.g. an RMSNorm or SwiGLU
				// output kept for a weight gradient) need not live until then. The attention
				// reads shadows only where attnShadows gave them, a plan that never reads the
				// fp32 values there.
				v.b16.last = max(v.b16.last, i)
				continue
			}
			use(v, i)
		}
		if ins.fwd != nil {
			use(ins.fwd.out, i)
			ins.fwd.stats.last = max(ins.fwd.stats.last, i)
		}
	}
	for _, o := range s.outputs {
		if o != nil {
			use(o, end)
		}
	}
	if keepLogits {
		use(s.vals[s.prog.Logits], end)
	}
	// bf16 shadows are read by the GEMMs that read their fp32 source.
	for i, ins := range s.instrs {
		for _, v := range ins.in {
			if v.b16 != nil {
				v.b16.last = max(v.b16.last, i)
			}
		}
	}
	for i, ins := range s.instrs {
		v := ins.out
		if ins.fused && shadowOnlyCapable(ins.info.Kind) && v.kind == valArena && v.b16Fused &&
			v.last <= i && (s.shadowOnly || s.attnShadows && attentionOperandProducer(ins)) {
			v.shadowOnly = true
		}
	}
	s.castAt = make([][]*val, end+1)
	for _, v := range s.all {
		if v.b16 != nil && !v.b16Fused {
			s.castAt[v.def+1] = append(s.castAt[v.def+1], v)
		}
	}
	for _, c := range s.castAt {
		sortVals(c)
	}
	alloc := [4]*firstFit{{}, {}, {}, {}}
	born := make([][]*val, end+1)
	dies := make([][]*val, end+1)
	added := map[*val]bool{}
	add := func(v *val) {
		if v == nil || v.kind != valArena || v.shadowOnly || added[v] {
			return
		}
		added[v] = true
		d := max(v.def, 0)
		if v.last < d {
			v.last = d
		}
		born[d] = append(born[d], v)
		dies[v.last] = append(dies[v.last], v)
	}
	for _, ins := range s.instrs {
		add(ins.out)
		add(ins.stats)
		add(ins.out.b16)
	}
	// Shadows of views and of inputs are not any instruction's output.
	var extra []*val
	for _, v := range s.all {
		if v.b16 != nil && (v.kind == valView || v.kind == valInput) {
			extra = append(extra, v.b16)
		}
	}
	sortVals(extra)
	for _, v := range extra {
		add(v)
	}
	for i := 0; i <= end; i++ {
		for _, v := range born[i] {
			v.off = alloc[v.dt].get(v.n)
		}
		for _, v := range dies[i] {
			alloc[v.dt].put(v.off, v.n)
		}
	}
	for dt := range alloc {
		s.peak[dt] = alloc[dt].top
	}
}

// firstFit places blocks in a line of elements, reusing freed ranges (aligned to 64 elements).
type firstFit struct {
	free [][2]int // sorted, coalesced [offset, size)
	top  int
}

const align = 128 // elements: 256-byte aligned bf16 views, so cuBLASLt takes every GEMM

func (a *firstFit) get(n int) int {
	n = (n + align - 1) / align * align
	for i, f := range a.free {
		if f[1] >= n {
			off := f[0]
			if f[1] == n {
				a.free = append(a.free[:i], a.free[i+1:]...)
			} else {
				a.free[i] = [2]int{f[0] + n, f[1] - n}
			}
			return off
		}
	}
	if k := len(a.free); k > 0 && a.free[k-1][0]+a.free[k-1][1] == a.top {
		// Extend the last free block at the top.
		off := a.free[k-1][0]
		a.free = a.free[:k-1]
		a.top = off + n
		return off
	}
	off := a.top
	a.top += n
	return off
}

func (a *firstFit) put(off, n int) {
	n = (n + align - 1) / align * align
	i := 0
	for i < len(a.free) && a.free[i][0] < off {
		i++
	}
	a.free = append(a.free, [2]int{})
	copy(a.free[i+1:], a.free[i:])
	a.free[i] = [2]int{off, n}
	// Coalesce with the neighbours.
	if i+1 < len(a.free) && a.free[i][0]+a.free[i][1] == a.free[i+1][0] {
		a.free[i][1] += a.free[i+1][1]
		a.free = append(a.free[:i+1], a.free[i+2:]...)
	}
	if i > 0 && a.free[i-1][0]+a.free[i-1][1] == a.free[i][0] {
		a.free[i-1][1] += a.free[i][1]
		a.free = append(a.free[:i], a.free[i+1:]...)
	}
}

// sortVals orders values by definition, then size (map iteration must not decide the layout).
func sortVals(vs []*val) {
	sort.SliceStable(vs, func(i, j int) bool {
		if vs[i].def != vs[j].def {
			return vs[i].def < vs[j].def
		}
		return vs[i].node != nil && vs[j].node != nil && vs[i].node.ID() < vs[j].node.ID()
	})
}

// rematerialise rewrites a training schedule so that each transformer layer's forward
// activations are freed after the forward pass and computed again right before the first
// backward instruction that reads them. The checkpoints are the layers' inputs (the residual
// stream entering input_layernorm); a layer's forward is every forward instruction that
// depends on its checkpoint and not on the next one. The copies run the same kernels on the
// same inputs (noise included), so the step's results do not change.
func (s *schedule) rematerialise() error {
	n := len(s.instrs)
	// Forward instructions: those the outputs need (the loss head included).
	fwd := make([]bool, n)
	var mark func(v *val)
	mark = func(v *val) {
		v = v.root()
		if v.def < 0 || fwd[v.def] {
			return
		}
		fwd[v.def] = true
		for _, in := range s.instrs[v.def].in {
			mark(in)
		}
	}
	for _, o := range s.outputs {
		if o != nil {
			mark(o)
		}
	}
	// Checkpoints: the x input of every input_layernorm RMSNorm, by layer order in the schedule.
	var checkpoints []*val
	for i, ins := range s.instrs {
		if fwd[i] && ins.fused && ins.info.Kind == ops.KindRMSNorm && strings.Contains(ins.in[1].node.Name(), "input_layernorm") {
			checkpoints = append(checkpoints, ins.in[0].root())
		}
	}
	if len(checkpoints) == 0 {
		return nil
	}
	level := map[*val]int{}
	for l, c := range checkpoints {
		level[c] = l
	}
	layer := make([]int, n) // -1: before the first checkpoint, or not a forward instruction
	for i, ins := range s.instrs {
		layer[i] = -1
		if !fwd[i] {
			continue
		}
		for _, in := range ins.in {
			r := in.root()
			if l, ok := level[r]; ok {
				layer[i] = max(layer[i], l)
			} else if r.def >= 0 {
				layer[i] = max(layer[i], layer[r.def])
			}
		}
		if _, ok := level[ins.out]; ok {
			layer[i] = -1 // a checkpoint stays: it is the next layer's input
		}
	}
	// Values of layer l that the backward reads get copies, made right before the first reader.
	type seg struct {
		instrs []int
		first  int // the first backward instruction that reads one of the segment's values
	}
	segs := make([]seg, len(checkpoints))
	for l := range segs {
		segs[l].first = -1
	}
	for i := range s.instrs {
		if l := layer[i]; l >= 0 {
			segs[l].instrs = append(segs[l].instrs, i)
		}
	}
	readsLayer := func(ins *instr, l int) bool {
		vs := append([]*val{}, ins.in...)
		if ins.fwd != nil {
			vs = append(vs, ins.fwd.out)
		}
		for _, v := range vs {
			if r := v.root(); r.def >= 0 && layer[r.def] == l {
				return true
			}
		}
		return false
	}
	for i, ins := range s.instrs {
		if fwd[i] {
			continue
		}
		for l := range segs {
			if segs[l].first < 0 && len(segs[l].instrs) > 0 && readsLayer(ins, l) {
				segs[l].first = i
			}
		}
	}
	// Attention backward instructions are linked to their forward later (link); pair them by
	// inputs as link does, after the rewrite. Build the new instruction list.
	insertAt := map[int][]int{}
	for l, sg := range segs {
		// The last layer's backward starts right after the forward: its activations stay.
		if sg.first >= 0 && l < len(segs)-1 {
			insertAt[sg.first] = append(insertAt[sg.first], l)
		}
	}
	clones := map[*val]*val{} // original (root or view) → copy, per layer
	clone := func(v *val) *val {
		if c, ok := clones[v]; ok {
			return c
		}
		return v
	}
	var out []*instr
	for i, ins := range s.instrs {
		for _, l := range insertAt[i] {
			for _, j := range segs[l].instrs {
				orig := s.instrs[j]
				cp := *orig
				cp.in = make([]*val, len(orig.in))
				for k, v := range orig.in {
					cp.in[k] = clone(v)
				}
				nv := *orig.out
				nv.b16, nv.b16Fused = nil, false
				cp.out = &nv
				clones[orig.out] = &nv
				s.all = append(s.all, &nv)
				cp.stats = nil
				cp.grad, cp.direct = -1, false
				out = append(out, &cp)
				s.recomputed++
			}
			// Views of the segment's values (Unpack/Reshape of forward values) follow their base.
			for _, v := range s.all {
				if v.kind == valView {
					if b, ok := clones[v.base]; ok {
						if _, done := clones[v]; !done {
							nv := *v
							nv.base, nv.b16, nv.b16Fused = b, nil, false
							clones[v] = &nv
							s.all = append(s.all, &nv)
						}
					}
				}
			}
		}
		if !fwd[i] {
			for k, v := range ins.in {
				if r := v.root(); r.def >= 0 && layer[r.def] >= 0 {
					ins.in[k] = clone(v)
				}
			}
		}
		out = append(out, ins)
	}
	s.instrs = out
	for i, ins := range s.instrs {
		ins.out.def = i
	}
	for _, v := range s.all {
		if v.kind == valView {
			v.def = v.root().def
		}
	}
	return nil
}

// arenaBytes is the device memory of a schedule's arenas.
func (s *schedule) arenaBytes() int64 {
	var n int64
	for dt, e := range s.peak {
		n += int64(e) * int64(kernels.DType(dt).Size())
	}
	return n
}

const gib = 1 << 30

// fitAdvice explains a step whose activations (need bytes) exceed the memory left (avail bytes)
// after the weights, gradients and optimiser state, and says what would fit: recomputation
// (recomputeNeed bytes, when it is not on yet), a smaller batch (activations scale with it),
// or a smaller training selection.
func fitAdvice(need, avail, recomputeNeed int64, recompute bool, batch int) string {
	msg := fmt.Sprintf("the step's activations need %.1f GiB but %.1f GiB of GPU memory are left after the weights, gradients and optimiser state", float64(need)/gib, float64(avail)/gib)
	var tips []string
	if !recompute && recomputeNeed > 0 {
		if recomputeNeed <= avail {
			tips = append(tips, fmt.Sprintf("--recompute (activations %.1f GiB: fits)", float64(recomputeNeed)/gib))
		} else {
			tips = append(tips, fmt.Sprintf("--recompute (activations %.1f GiB: still too much alone)", float64(recomputeNeed)/gib))
		}
	}
	best := need
	if !recompute && recomputeNeed > 0 && recomputeNeed < need {
		best = recomputeNeed
	}
	if batch > 1 && best > 0 {
		if fit := int(int64(batch) * avail / best); fit >= 1 && fit < batch {
			tips = append(tips, fmt.Sprintf("a batch of %d or less (with gradient accumulation for the same tokens per step)", fit))
		}
	}
	tips = append(tips, "a shorter sequence", "training a subset (recipe train: attention or decisions), which drops the gradients and moments of the rest")
	return msg + "; try " + strings.Join(tips, ", or ")
}

// ErrDoesNotFit is the error of a model or step that does not fit in the GPU's memory; the
// message says what would.
var ErrDoesNotFit = errors.New("device: does not fit in GPU memory")

// paramState is the device memory of one parameter of n elements of which trained are
// trained (0 when frozen): fp32 master and bf16 copy, and when trained an fp32 gradient and
// the two AdamW moments (plus compact gradient and weight blocks for a row subset).
func paramState(n, trained int, subset bool) int64 {
	b := int64(n) * 6
	if trained > 0 {
		b += int64(n)*4 + int64(trained)*8
		if subset {
			b += int64(trained) * 8
		}
	}
	return b
}

// stateAdvice explains a model whose weights, gradients and moments (need bytes) exceed the
// free memory.
func stateAdvice(need, free int64, frozenShare float64) string {
	msg := fmt.Sprintf("the weights (fp32 and bf16), gradients and AdamW moments need %.1f GiB but the GPU has %.1f GiB free", float64(need)/gib, float64(free)/gib)
	if frozenShare < 0.5 {
		msg += "; train a subset (recipe train: attention, or decisions for about 6 bytes per parameter instead of 18), or use a smaller model"
	} else {
		msg += "; use a smaller model (weights alone take 6 bytes per parameter)"
	}
	return msg
}
