//go:build dmc_cuda

package device

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/graph/ops"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer/step"
)

// devBuf is a value's device buffer (plan.go's val.buf).
type devBuf = *kernels.DevBuf

// Options configure the executor.
type Options struct {
	Ordinal int // GPU ordinal
	// FP32GEMM runs every GEMM with fp32 operands and fp32 compute (no bf16, no TF32) and the
	// exact fp32 attention kernels: slower, for parity tests against the CPU graph. Otherwise
	// GEMMs take bf16 operands and attention runs on tensor cores where D allows (16–128).
	FP32GEMM bool
	// Train says what of each parameter is trained (nil: all): frozen parameters get no
	// gradient (their weight-gradient GEMMs are not run) and no moments; a row subset gets
	// moments for its rows only.
	Train []step.Trained
	// Recompute keeps only each layer's input through the forward pass and recomputes the
	// layer's activations just before its backward (less memory, about a third more compute;
	// the results are the same).
	Recompute bool
	// Switches, when not nil, are the schedule's switches instead of the DMC_* environment's
	// (EnvPlanSwitches).
	Switches *PlanSwitches
}

// EnvPlanSwitches are the schedule switches the DMC_* environment variables set.
func EnvPlanSwitches() PlanSwitches {
	return PlanSwitches{FoldSums: foldSumsEnabled, GradShadows: gradShadowsEnabled, ShadowOnly: shadowOnlyEnabled,
		PairNormGrads: pairNormGradsEnabled, AttnShadows: attnShadowsEnabled}
}

// dparam is one parameter on the device: fp32 master, bf16 copy and, when trained, the
// gradient accumulator and the AdamW moments.
type dparam struct {
	name    string
	n       int
	w, w16  *kernels.DevBuf
	g, m, v *kernels.DevBuf // nil when frozen (or not training)
	host    []float32       // the CPU graph's tensor (Params()[i].Value)
	sel     step.Trained
	cols    int
	// a trained row subset: the rows, and compact copies of the gradient and weight rows
	rows, cg, cw *kernels.DevBuf
}

// runner executes the schedules of one graph.Exec (the model, or its distillation teacher).
type runner struct {
	dev       *kernels.TrainDevice
	switches  PlanSwitches // the schedule's
	g         *graph.Graph
	cfg       model.Config
	params    []*dparam
	scheds    map[[2]bool]*schedule
	arena     [4]*kernels.DevBuf
	gen       int
	ids, tgts *kernels.DevBuf
	embOff    *kernels.DevBuf
	embPos    *kernels.DevBuf
	noise     *kernels.DevBuf
	scal      *kernels.DevBuf
	results   *kernels.DevBuf
	zeroTL    *kernels.DevBuf
	rope      map[ops.RoPESpec]*kernels.RoPETables
	owned     []*kernels.DevBuf
	hostIDs   []int32
	hostTgts  []int32
	keepLogit bool
	fp32GEMM  bool
	recompute bool
	// profile, when set, accumulates the time of each op kind (a sync after every op)
	profile map[string]*opTime
	// per run
	in        graph.Inputs
	scalarsV  [6]float64
	teacherTL *kernels.DevBuf
}

// Model is the GPU executor of a training graph: step.Model and step.Optimizer.
type Model struct {
	r       *runner
	teacher *runner
	norm    *kernels.DevBuf // F64[1]
	clip    *kernels.DevBuf // F32[1]
	// comm, when set, is the data-parallel group: Update sums the gradients over it first.
	comm   *kernels.NCCLComm
	scalar *kernels.DevBuf // F64 scratch of GroupComm's scalar reductions
}

// foldSumsEnabled folds gradient sums into the ops that feed them (plan.go foldSums): 5% of
// the 953M DMC step on the H200 (docs/results/gpu-retrofit.md). DMC_FOLD_SUMS=0 turns it off
// (the unfolded schedule, for debugging and measurements).
var foldSumsEnabled = os.Getenv("DMC_FOLD_SUMS") != "0"

// gradShadowsEnabled has the gradient sums (TrainDevice.Add, 16-byte accesses), SwiGLU's
// backward, RMSNorm's dx and the cross-entropy gradient (without a teacher, alone: nothing
// reads its fp32 value) write their outputs' bf16 shadows themselves
// (planOptions.gradShadows), saving a cast pass over each; DMC_GRAD_SHADOWS=1 sets it.
// Written on 2026-12-04 and not yet run on a GPU, hence opt-in.
var gradShadowsEnabled = os.Getenv("DMC_GRAD_SHADOWS") == "1"

// shadowOnlyEnabled (DMC_SHADOW_ONLY=1) lets GEMM operands' fp32 values die at their last
// other reader and has their producers write the bf16 shadows alone (planOptions.shadowOnly);
// without it they live until their GEMMs and are written even where only the shadows are
// read (the schedule before 2026-12-07). Written on 2026-12-07 and not yet run on a GPU,
// hence opt-in.
var shadowOnlyEnabled = os.Getenv("DMC_SHADOW_ONLY") == "1"

// pairNormGradsEnabled (DMC_NORM_GRADS=paired) has each RMSNorm dx write the norm's weight
// gradient too, in one read of x and dy (planOptions.pairNormGrads). Written on 2026-12-07
// and not yet run on a GPU, hence opt-in.
var pairNormGradsEnabled = os.Getenv("DMC_NORM_GRADS") == "paired"

// attnShadowsEnabled (DMC_ATTN_SHADOWS=1) casts the attention's q, k and v to bf16 once, as
// shadows the forward and the backward share (planOptions.attnShadows). Written on
// 2026-12-07 and not yet run on a GPU, hence opt-in.
var attnShadowsEnabled = os.Getenv("DMC_ATTN_SHADOWS") == "1"

var _ step.Optimizer = (*Model)(nil)

// New puts g's parameters on GPU opt.Ordinal and returns its executor. g stays the model's
// definition and its host mirror: Params() are g's tensors, which Pull refreshes.
func New(g *graph.Graph, opt Options) (*Model, error) {
	dev, err := kernels.OpenTrain(opt.Ordinal)
	if err != nil {
		return nil, fmt.Errorf("open GPU %d: %w", opt.Ordinal, err)
	}
	m := &Model{}
	sw := EnvPlanSwitches()
	if opt.Switches != nil {
		sw = *opt.Switches
	}
	if m.r, err = newRunner(dev, g, !g.ForwardOnly(), false, opt.FP32GEMM, opt.Train, sw); err == nil {
		m.r.recompute = opt.Recompute
	}
	if err != nil {
		m.Close()
		return nil, err
	}
	if t := g.Teacher(); t != nil {
		if m.teacher, err = newRunner(dev, t, false, true, opt.FP32GEMM, nil, sw); err != nil {
			m.Close()
			return nil, fmt.Errorf("distillation teacher: %w", err)
		}
	}
	if m.norm, err = dev.Alloc(kernels.F64, 1); err != nil {
		m.Close()
		return nil, err
	}
	if m.clip, err = dev.Alloc(kernels.F32, 1); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func newRunner(dev *kernels.TrainDevice, g *graph.Graph, train, keepLogits, fp32GEMM bool, sel []step.Trained, sw PlanSwitches) (*runner, error) {
	r := &runner{dev: dev, g: g, cfg: g.Config(), scheds: map[[2]bool]*schedule{}, rope: map[ops.RoPESpec]*kernels.RoPETables{},
		keepLogit: keepLogits, fp32GEMM: fp32GEMM, switches: sw}
	if sel != nil && len(sel) != len(g.ParamsT()) {
		return nil, fmt.Errorf("device: %d training selections for %d parameters", len(sel), len(g.ParamsT()))
	}
	alloc := func(dt kernels.DType, n int) (*kernels.DevBuf, error) {
		b, err := dev.Alloc(dt, max(n, 1))
		if err == nil {
			r.owned = append(r.owned, b)
		}
		return b, err
	}
	ps := g.ParamsT()
	var need, frozenN, total int64
	for i, p := range ps {
		n, cols := len(p.Value), len(p.Value)
		if len(p.Shape) == 2 {
			cols = p.Shape[1]
		}
		s := step.Trained{All: true}
		if sel != nil {
			s = sel[i]
		}
		trained := 0
		if train && !s.Frozen() {
			trained = s.Elements(n, cols)
		}
		need += paramState(n, trained, !s.All)
		total += int64(n)
		if trained == 0 {
			frozenN += int64(n)
		}
	}
	if free, _ := dev.MemInfo(); need > free {
		return nil, fmt.Errorf("%w: %s", ErrDoesNotFit, stateAdvice(need, free, float64(frozenN)/float64(max(total, 1))))
	}
	for i, p := range ps {
		d := &dparam{name: p.Name, n: len(p.Value), host: p.Value, sel: step.Trained{All: true}, cols: len(p.Value)}
		if len(p.Shape) == 2 {
			d.cols = p.Shape[1]
		}
		if sel != nil {
			d.sel = sel[i]
		}
		var err error
		if d.w, err = alloc(kernels.F32, d.n); err != nil {
			r.free()
			return nil, fmt.Errorf("device memory for %s: %w", p.Name, err)
		}
		if d.w16, err = alloc(kernels.BF16, d.n); err != nil {
			r.free()
			return nil, fmt.Errorf("device memory for %s: %w", p.Name, err)
		}
		if train && !d.sel.Frozen() {
			nm := d.sel.Elements(d.n, d.cols)
			bufs := []struct {
				b **kernels.DevBuf
				n int
			}{{&d.g, d.n}, {&d.m, nm}, {&d.v, nm}}
			if !d.sel.All {
				bufs = append(bufs, struct {
					b **kernels.DevBuf
					n int
				}{&d.cg, nm}, struct {
					b **kernels.DevBuf
					n int
				}{&d.cw, nm})
			}
			for _, x := range bufs {
				if *x.b, err = alloc(kernels.F32, x.n); err != nil {
					r.free()
					return nil, fmt.Errorf("device memory for %s: %w", p.Name, err)
				}
				if err := (*x.b).Zero(); err != nil {
					r.free()
					return nil, err
				}
			}
			if !d.sel.All {
				idx := make([]int32, len(d.sel.Rows))
				for k, row := range d.sel.Rows {
					idx[k] = int32(row)
				}
				if d.rows, err = dev.FromI32(idx); err != nil {
					r.free()
					return nil, err
				}
				r.owned = append(r.owned, d.rows)
			}
		}
		r.params = append(r.params, d)
	}
	if err := r.pushWeights(); err != nil {
		r.free()
		return nil, err
	}
	c := r.cfg
	N := g.B * g.T
	var err error
	for _, x := range []struct {
		b  **kernels.DevBuf
		dt kernels.DType
		n  int
	}{{&r.ids, kernels.I32, N}, {&r.tgts, kernels.I32, N}, {&r.embOff, kernels.I32, c.VocabSize + 1}, {&r.embPos, kernels.I32, N},
		{&r.noise, kernels.F32, c.NLayers * N * c.NKVHeads}, {&r.scal, kernels.F32, 6}, {&r.results, kernels.F32, 5}} {
		if *x.b, err = alloc(x.dt, x.n); err != nil {
			r.free()
			return nil, err
		}
	}
	if err := r.results.Zero(); err != nil {
		r.free()
		return nil, err
	}
	r.hostIDs, r.hostTgts = make([]int32, N), make([]int32, N)
	return r, nil
}

func (r *runner) pushWeights() error {
	for _, d := range r.params {
		if err := d.w.Upload(d.host); err != nil {
			return err
		}
		if err := r.dev.CastBF16(d.w16, d.w); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) free() {
	for _, b := range r.owned {
		b.Free()
	}
	r.owned = nil
	for i, a := range r.arena {
		if a != nil {
			a.Free()
			r.arena[i] = nil
		}
	}
	for _, t := range r.rope {
		t.Free()
	}
	r.rope = map[ops.RoPESpec]*kernels.RoPETables{}
	for _, s := range r.scheds {
		for _, c := range s.consts {
			if c.buf != nil {
				c.buf.Free()
			}
		}
	}
	if r.zeroTL != nil {
		r.zeroTL.Free()
		r.zeroTL = nil
	}
}

// Close frees the device memory (the Model is unusable afterwards).
func (m *Model) Close() {
	if m.r != nil {
		m.r.free()
	}
	if m.teacher != nil {
		m.teacher.free()
	}
	if m.norm != nil {
		m.norm.Free()
	}
	if m.clip != nil {
		m.clip.Free()
	}
	if m.scalar != nil {
		m.scalar.Free()
	}
	if m.comm != nil {
		m.comm.Close()
	}
	if m.r != nil {
		m.r.dev.Close()
	}
}

// Describe names the device.
func (m *Model) Describe() string { return m.r.dev.Describe() }

// Config returns the model configuration.
func (m *Model) Config() model.Config { return m.r.cfg }

// ArenaBytes is the activation and gradient arena's size (the largest schedule so far).
func (m *Model) ArenaBytes() int64 {
	var n int64
	for _, r := range []*runner{m.r, m.teacher} {
		if r == nil {
			continue
		}
		for _, a := range r.arena {
			if a != nil {
				n += a.Bytes()
			}
		}
	}
	return n
}

// Params returns the host mirrors of the parameters (current after Pull).
func (m *Model) Params() []step.Param { return m.r.g.Params() }

// Weights returns a float32 copy of the device's current parameters.
func (m *Model) Weights() (*model.Weights, error) {
	if err := m.pullValues(); err != nil {
		return nil, err
	}
	return m.r.g.Weights(), nil
}

func (m *Model) pullValues() error {
	for _, d := range m.r.params {
		if err := d.w.Download(d.host); err != nil {
			return err
		}
	}
	return nil
}

// Step runs forward and backward on one micro-batch; the gradient is added to the earlier
// micro-batches' when sc.LocalMicroBatch > 0.
func (m *Model) Step(b step.Batch, sc step.Context) (step.Losses, error) { return m.run(b, sc, true) }

// Forward runs the forward pass only.
func (m *Model) Forward(b step.Batch, sc step.Context) (step.Losses, error) {
	return m.run(b, sc, false)
}

func (m *Model) run(b step.Batch, sc step.Context, backward bool) (step.Losses, error) {
	r := m.r
	if backward && r.g.ForwardOnly() {
		return step.Losses{}, fmt.Errorf("device: Step on a forward-only model")
	}
	in, err := r.g.Inputs(b, sc)
	if err != nil {
		return step.Losses{}, err
	}
	r.teacherTL = nil
	if m.teacher != nil && in.Teacher {
		tin, err := m.teacher.g.Inputs(b, step.Context{ZeroOut: 1})
		if err != nil {
			return step.Losses{}, fmt.Errorf("distillation teacher: %w", err)
		}
		if _, err := m.teacher.exec(b, step.Context{ZeroOut: 1}, tin, false); err != nil {
			return step.Losses{}, fmt.Errorf("distillation teacher: %w", err)
		}
		s := m.teacher.scheds[[2]bool{false, false}]
		r.teacherTL = s.vals[s.prog.Logits].buf
	}
	l, err := r.exec(b, sc, in, backward)
	if err != nil {
		return l, err
	}
	if !finite(l.Loss) {
		return l, graph.ErrNotFinite
	}
	return l, nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// schedule returns (compiling on first use) the schedule of a variant.
func (r *runner) schedule(useDMC, backward bool) (*schedule, error) {
	key := [2]bool{useDMC, backward}
	if s, ok := r.scheds[key]; ok {
		return s, nil
	}
	p, err := r.g.Program(useDMC)
	if err != nil {
		return nil, err
	}
	frozen := make([]bool, len(r.params))
	for i, d := range r.params {
		frozen[i] = d.g == nil
	}
	opt := planOptions{backward: backward, keepLogits: r.keepLogit, fp32GEMM: r.fp32GEMM, frozen: frozen}
	r.switches.apply(&opt)
	withRecompute := opt
	withRecompute.recompute = r.recompute
	s, err := compileOpts(p, withRecompute)
	if err != nil {
		return nil, err
	}
	for _, c := range s.consts {
		if c.buf, err = r.dev.FromF32([]float32{c.constV}); err != nil {
			return nil, err
		}
	}
	for _, ins := range s.instrs {
		if ins.fused && ins.info.Kind == ops.KindEmbeddingDW {
			s.embedDW = true
		}
		if ins.fused && ins.info.Kind == ops.KindRoPE {
			sp := ins.info.RoPE
			sp.Channel, sp.Heads = 0, 0 // the tables depend on layout, theta, D and T only
			if _, ok := r.rope[sp]; !ok {
				t, err := r.dev.NewRoPETables(sp.Layout, sp.Theta, sp.HeadD, sp.SeqLen)
				if err != nil {
					return nil, err
				}
				r.rope[sp] = t
			}
		}
	}
	if err := r.checkFit(s, p, opt); err != nil {
		return nil, err
	}
	// Grow the arenas to the largest schedule; every schedule re-binds after a growth.
	for dt, need := range s.peak {
		if need == 0 || (r.arena[dt] != nil && r.arena[dt].Len() >= need) {
			continue
		}
		if r.arena[dt] != nil {
			r.arena[dt].Free()
			r.arena[dt] = nil
		}
		if r.arena[dt], err = r.dev.Alloc(kernels.DType(dt), need); err != nil {
			return nil, fmt.Errorf("device memory for the activations (%d elements of %s): %w; use a smaller batch or sequence", need, kernels.DType(dt), err)
		}
		r.gen++
	}
	r.scheds[key] = s
	return s, nil
}

// checkFit refuses a schedule whose arenas cannot be allocated, before trying, with advice on
// what would fit (opt: the schedule's options, to plan the recomputed variant for comparison).
func (r *runner) checkFit(s *schedule, p *graph.Program, opt planOptions) error {
	var grow, have int64
	for dt, need := range s.peak {
		size := int64(kernels.DType(dt).Size())
		if cur := r.arena[dt]; cur != nil {
			have += int64(cur.Len()) * size
			if cur.Len() >= need {
				continue
			}
		}
		grow += int64(need) * size
	}
	free, _ := r.dev.MemInfo()
	const reserve = 512 << 20 // cuBLAS workspaces, scratch buffers of the kernels
	avail := free + have - reserve
	if grow == 0 || s.arenaBytes() <= avail {
		return nil
	}
	var rc int64
	if !r.recompute && opt.backward {
		opt.recompute = true
		if alt, err := compileOpts(p, opt); err == nil {
			rc = alt.arenaBytes()
		}
	}
	return fmt.Errorf("%w: %s", ErrDoesNotFit, fitAdvice(s.arenaBytes(), max(avail, 0), rc, r.recompute, r.g.B))
}

// bind resolves every value's device buffer for the current arenas.
func (r *runner) bind(s *schedule) {
	if s.bound == r.gen {
		return
	}
	var resolve func(v *val) *kernels.DevBuf
	resolve = func(v *val) *kernels.DevBuf {
		switch v.kind {
		case valArena:
			v.buf = nil // a value whose producer writes only its shadow has no storage
			if !v.shadowOnly {
				v.buf = r.arena[v.dt].Slice(v.off, v.n)
			}
		case valView:
			v.buf = nil // a view nothing reads of such a value
			if b := resolve(v.base); b != nil {
				v.buf = b.Slice(v.viewOff, v.n)
			}
		case valParam:
			v.buf = r.params[v.param].w
		case valGrad:
			v.buf = r.params[v.param].g
		}
		if v.b16 != nil {
			resolve(v.b16)
		}
		return v.buf
	}
	for _, v := range s.all { // the nodes' values and the recomputed copies
		resolve(v)
	}
	for _, ins := range s.instrs {
		if ins.stats != nil {
			resolve(ins.stats)
		}
	}
	if s.ids != nil {
		s.ids.buf = r.ids
	}
	if s.targets != nil {
		s.targets.buf = r.tgts
	}
	for l, v := range s.noise {
		if v != nil {
			v.buf = r.noise.Slice(l*s.noiseLen, s.noiseLen)
		}
	}
	for n, i := range s.scalars {
		if v, ok := s.vals[n]; ok {
			v.buf = r.scal.Slice(i, 1)
		}
	}
	s.bound = r.gen
}

// b16 is the bf16 operand of v: a parameter's copy or v's shadow.
func (r *runner) b16(v *val) *kernels.DevBuf {
	if r.fp32GEMM {
		return v.buf
	}
	if v.kind == valParam {
		return r.params[v.param].w16
	}
	return v.b16.buf
}

func (r *runner) exec(b step.Batch, sc step.Context, in graph.Inputs, backward bool) (step.Losses, error) {
	s, err := r.schedule(in.UseDMC, backward)
	if err != nil {
		return step.Losses{}, err
	}
	r.bind(s)
	r.in = in
	r.scalarsV = [6]float64{in.ChScale, in.Hard, in.AlphaStar, in.CRWeight, in.LMWeight, in.KDWeight}
	sv := make([]float32, 6)
	for i, x := range r.scalarsV {
		sv[i] = float32(x)
	}
	if err := r.scal.Upload(sv); err != nil {
		return step.Losses{}, err
	}
	for i, id := range b.Inputs {
		r.hostIDs[i] = int32(id)
	}
	for i, id := range b.Targets {
		r.hostTgts[i] = int32(id)
	}
	if err := r.ids.Upload(r.hostIDs); err != nil {
		return step.Losses{}, err
	}
	if err := r.tgts.Upload(r.hostTgts); err != nil {
		return step.Losses{}, err
	}
	if s.embedDW && backward {
		off, pos, err := kernels.EmbeddingIndex(r.hostIDs, r.cfg.VocabSize)
		if err != nil {
			return step.Losses{}, err
		}
		if err := r.embOff.Upload(off); err != nil {
			return step.Losses{}, err
		}
		if err := r.embPos.Upload(pos); err != nil {
			return step.Losses{}, err
		}
	}
	if in.Noise && len(s.noise) > 0 {
		// Drawn on the device from the same keys (the host loop cost ~9 ms a layer at 16K tokens).
		for l := range s.noise {
			state := r.g.NoiseKey(sc, l).State()
			if err := r.dev.LogisticNoise(r.noise.Slice(l*s.noiseLen, s.noiseLen), state, b.BatchSize, b.SeqLen, r.cfg.NKVHeads, graph.NoiseScale(sc)); err != nil {
				return step.Losses{}, err
			}
		}
	}
	if s.teacher != nil {
		if r.teacherTL != nil {
			s.teacher.buf = r.teacherTL
		} else {
			// No teacher pass (β = 0): zero logits keep the unused KL term finite, as on the CPU.
			if r.zeroTL == nil {
				if r.zeroTL, err = r.dev.Alloc(kernels.F32, s.teacher.n); err != nil {
					return step.Losses{}, err
				}
				if err := r.zeroTL.Zero(); err != nil {
					return step.Losses{}, err
				}
			}
			s.teacher.buf = r.zeroTL
		}
	}
	casts := func(vs []*val) error {
		for _, v := range vs {
			if err := r.timed("bf16 shadow cast", func() error { return r.dev.CastBF16(v.b16.buf, v.buf) }); err != nil {
				return err
			}
		}
		return nil
	}
	if err := casts(s.castAt[0]); err != nil {
		return step.Losses{}, err
	}
	for i, ins := range s.instrs {
		run := func() error { return r.run(s, ins, sc.LocalMicroBatch) }
		var err error
		if r.profile == nil {
			err = run() // no names built per instruction and step
		} else {
			k := opName(ins)
			if ins.grad >= 0 && !ins.direct {
				k += " (+grad add)"
			}
			err = r.timed(k, run)
		}
		if err != nil {
			return step.Losses{}, fmt.Errorf("device: %s (node %q): %w", opName(ins), ins.node.Name(), err)
		}
		if err := casts(s.castAt[i+1]); err != nil {
			return step.Losses{}, err
		}
	}
	for i, o := range s.outputs {
		if o != nil {
			if err := r.dev.EW(kernels.EwCopy, r.results.Slice(i, 1), o.buf, nil, 1, false, false); err != nil {
				return step.Losses{}, err
			}
		}
	}
	res := make([]float32, 5)
	if err := r.results.Download(res); err != nil {
		return step.Losses{}, err
	}
	l := step.Losses{Loss: float64(res[0]), LM: float64(res[1]), Tokens: in.ValidTargets}
	if in.UseDMC {
		l.CR, l.MeanAlpha = float64(res[3]), float64(res[4])
	}
	if sc.DistillWeight > 0 {
		l.KD = float64(res[2])
	}
	return l, nil
}

// timed runs fn; when profiling, between device syncs, adding its time to the profile's
// entry name.
func (r *runner) timed(name string, fn func() error) error {
	if r.profile == nil {
		return fn()
	}
	if err := r.dev.Sync(); err != nil {
		return err
	}
	t0 := time.Now()
	err := fn()
	if err == nil {
		err = r.dev.Sync()
	}
	pt := r.profile[name]
	if pt == nil {
		pt = &opTime{}
		r.profile[name] = pt
	}
	pt.n++
	pt.d += time.Since(t0)
	return err
}

func opName(ins *instr) string {
	if ins.fused {
		return ins.info.Kind.String()
	}
	return ins.node.Op().String()
}

// hostScalar is the value of a scalar input for this run.
func (r *runner) hostScalar(s *schedule, v *val) (float64, error) {
	i, ok := s.scalars[v.node]
	if !ok {
		return 0, fmt.Errorf("a scalar operand that is not a graph input (%q) needs a host value", v.node.Name())
	}
	return r.scalarsV[i], nil
}

func dims(v *val) (int, int) {
	s := v.node.Shape()
	if len(s) != 2 {
		panic(fmt.Sprintf("device: %q has shape %v, want a matrix", v.node.Name(), s))
	}
	return s[0], s[1]
}

func dmcGeom(s ops.DMCSpec) kernels.DMCGeom {
	return kernels.DMCGeom{QHeads: s.QHeads, KVHeads: s.KVHeads, HeadD: s.HeadD, SeqLen: s.SeqLen, Channel: s.Channel,
		DecisionOffset: s.DecisionOffset, ImportanceOffset: s.ImportanceOffset, Temperature: s.Temperature, Window: s.Window}
}

// run executes one instruction and, for a parameter's gradient, adds it into the accumulator.
func (r *runner) run(s *schedule, ins *instr, mb int) error {
	if ins.nop {
		return nil // a sum folded into the op before it
	}
	d, out := r.dev, ins.out.buf
	acc := mb > 0 // direct gradient kernels accumulate from the second micro-batch on
	var err error
	if !ins.fused {
		err = r.runGeneric(s, ins)
	} else {
		err = r.runFused(s, ins, acc)
	}
	if err != nil || ins.grad < 0 || ins.direct {
		return err
	}
	g := r.params[ins.grad].g
	if mb == 0 {
		return d.EW(kernels.EwCopy, g, out, nil, g.Len(), false, false)
	}
	return d.EW(kernels.EwAdd, g, g, out, g.Len(), false, false)
}

// runGeneric runs one of gorgonia's element-wise ops.
func (r *runner) runGeneric(s *schedule, ins *instr) error {
	d, in, out, n := r.dev, ins.in, ins.out.buf, ins.out.n
	switch ins.gen {
	case genEW:
		if s.gradShadows && sameShapeAdd(ins) {
			var out16 *kernels.DevBuf
			if ins.out.b16Fused {
				out16 = ins.out.b16.buf
			}
			return d.Add(out, out16, in[0].buf, in[1].buf, n)
		}
		var b *kernels.DevBuf
		bScalar := false
		if len(in) > 1 {
			b, bScalar = in[1].buf, in[1].n == 1 && n > 1
		}
		return d.EW(ins.ew, out, in[0].buf, b, n, in[0].n == 1 && n > 1, bScalar)
	case genSum:
		return d.SumAll(out, in[0].buf, in[0].n)
	case genRepeat:
		return d.EW(kernels.EwCopy, out, in[0].buf, nil, n, true, false)
	}
	return fmt.Errorf("no kernel")
}

// fusedOutputs are the buffers an op that may write its output's bf16 shadow itself writes:
// the fp32 output (nil where nothing reads it, shadowOnly) and the shadow (nil where the
// producer does not write it).
func fusedOutputs(ins *instr) (out, out16 *kernels.DevBuf) {
	v := ins.out
	if v.b16Fused {
		out16 = v.b16.buf
	}
	if !v.shadowOnly {
		out = v.buf
	}
	return out, out16
}

// runFused runs one fused op of graph/ops.
func (r *runner) runFused(s *schedule, ins *instr, acc bool) error {
	d, in, out := r.dev, ins.in, ins.out.buf
	var err error
	switch ins.info.Kind {
	case ops.KindLinear:
		rows, inD := dims(in[0])
		outD, _ := dims(in[1])
		err = d.LinearForward(out, r.b16(in[0]), r.b16(in[1]), rows, inD, outD, false)
	case ops.KindLinearDX:
		rows, outD := dims(in[0])
		_, inD := dims(in[1])
		err = d.LinearBackwardX(out, r.b16(in[0]), r.b16(in[1]), rows, inD, outD, ins.accum)
	case ops.KindLinearDW:
		rows, outD := dims(in[0])
		_, inD := dims(in[1])
		err = d.LinearBackwardW(out, r.b16(in[0]), r.b16(in[1]), rows, inD, outD, ins.direct && acc)
	case ops.KindRMSNorm:
		rows, dd := dims(in[0])
		out, y16 := fusedOutputs(ins)
		err = d.RMSNormForward(out, y16, in[0].buf, in[1].buf, rows, dd, ins.info.Eps)
	case ops.KindRMSNormDX:
		rows, dd := dims(in[0])
		var dx16 *kernels.DevBuf
		if ins.out.b16Fused {
			dx16 = ins.out.b16.buf
		}
		if dw := ins.normDW; dw != nil {
			err = d.RMSNormBackwardXW(out, dx16, dw.out.buf, in[0].buf, in[1].buf, in[2].buf, rows, dd, ins.info.Eps, ins.accum, acc)
			break
		}
		err = d.RMSNormBackwardX(out, dx16, in[0].buf, in[1].buf, in[2].buf, rows, dd, ins.info.Eps, ins.accum)
	case ops.KindRMSNormDW:
		rows, dd := dims(in[0])
		// dw only: the kernel does not read w then; out stands in for it.
		err = d.RMSNormBackward(nil, out, in[0].buf, out, in[1].buf, rows, dd, ins.info.Eps, ins.direct && acc)
	case ops.KindRoPE:
		sp := ins.info.RoPE
		key := sp
		key.Channel, key.Heads = 0, 0
		var sc float64
		if sc, err = r.hostScalar(s, in[1]); err == nil {
			rows, _ := dims(in[0])
			out, y16 := fusedOutputs(ins)
			err = d.RoPE16(out, y16, in[0].buf, r.rope[key], rows, sp.Heads, sp.Channel, sc, ins.info.Inverse)
		}
	case ops.KindSwiGLU:
		out, y16 := fusedOutputs(ins)
		err = d.SwiGLUForward(out, y16, in[0].buf, in[1].buf)
	case ops.KindSwiGLUGrad:
		n := in[0].n
		var h16 [2]*kernels.DevBuf // the halves' shadows when the kernel writes them
		for k, v := range ins.halves16 {
			if v != nil {
				h16[k] = v.b16.buf
			}
		}
		err = d.SwiGLUBackward(out.Slice(0, n), out.Slice(n, n), h16[0], h16[1], in[0].buf, in[1].buf, in[2].buf)
	case ops.KindEmbedding:
		_, dd := dims(in[0])
		err = d.EmbeddingForward(out, in[0].buf, in[1].buf, in[1].n, dd)
	case ops.KindEmbeddingDW:
		_, dd := dims(in[1])
		err = d.EmbeddingBackward(out, in[1].buf, r.embOff, r.embPos, ins.info.Vocab, dd, ins.direct && acc)
	case ops.KindSoftmaxCE:
		rows, V := dims(in[0])
		err = d.SoftmaxCE(out, in[0].buf, in[1].buf, rows, V)
	case ops.KindSoftmaxCEGrad:
		rows, V := dims(in[0])
		out, dl16 := fusedOutputs(ins)
		err = d.SoftmaxCEBackward16(out, dl16, in[0].buf, in[1].buf, rows, V, r.invCount(), in[2].buf)
	case ops.KindSoftmaxKL:
		rows, V := dims(in[0])
		err = d.SoftmaxKL(out, in[0].buf, in[1].buf, in[2].buf, rows, V)
	case ops.KindSoftmaxKLGrad:
		rows, V := dims(in[0])
		err = d.SoftmaxKLBackward(out, in[0].buf, in[1].buf, in[2].buf, rows, V, r.invCount(), in[3].buf)
	case ops.KindDMCDecide, ops.KindDMCDecideGrad:
		var mode float64
		if mode, err = r.hostScalar(s, in[2]); err == nil {
			rows, _ := dims(in[0])
			m := int(ops.DecisionModeOf(mode))
			switch {
			case ins.info.Kind == ops.KindDMCDecide:
				err = d.DMCDecide(out, in[0].buf, in[1].buf, dmcGeom(ins.info.DMC), rows, m)
			case ins.accum:
				err = d.DMCDecideBackwardAdd(out, in[0].buf, in[1].buf, in[3].buf, dmcGeom(ins.info.DMC), rows, m)
			default:
				err = d.DMCDecideBackward(out, in[0].buf, in[1].buf, in[3].buf, dmcGeom(ins.info.DMC), rows, m)
			}
		}
	case ops.KindDMCImportance:
		rows, _ := dims(in[0])
		err = d.DMCImportance(out, in[0].buf, dmcGeom(ins.info.DMC), rows, dmc.Epsilon[float32]())
	case ops.KindDMCImportanceGrad:
		rows, _ := dims(in[0])
		if ins.accum {
			err = d.DMCImportanceBackwardAdd(out, in[0].buf, in[1].buf, dmcGeom(ins.info.DMC), rows)
		} else {
			err = d.DMCImportanceBackward(out, in[0].buf, in[1].buf, dmcGeom(ins.info.DMC), rows)
		}
	case ops.KindDMCMerge:
		rows, _ := dims(in[0])
		out, y16 := fusedOutputs(ins)
		err = d.DMCMerge16(out, y16, in[0].buf, in[1].buf, in[2].buf, dmcGeom(ins.info.DMC), rows)
	case ops.KindDMCMergeGrad:
		rows, _ := dims(in[0])
		nx, na := in[0].n, in[1].n
		err = d.DMCMergeBackward(out.Slice(0, nx), out.Slice(nx, na), out.Slice(nx+na, na), in[0].buf, in[1].buf, in[2].buf, in[3].buf,
			dmcGeom(ins.info.DMC), rows)
	case ops.KindAttention:
		a := ins.info.Attn
		rows, _ := dims(in[0])
		var alpha *kernels.DevBuf
		if a.Masked {
			alpha = in[3].buf
		}
		g := kernels.AttnGeom{QHeads: a.QHeads, KVHeads: a.KVHeads, HeadD: a.HeadD, SeqLen: a.SeqLen, TensorCores: !r.fp32GEMM}
		if ins.attn16 {
			err = d.AttentionForwardBF16(out, ins.stats.buf, in[0].b16.buf, in[1].b16.buf, in[2].b16.buf, alpha, g, rows)
			break
		}
		err = d.AttentionForward(out, ins.stats.buf, in[0].buf, in[1].buf, in[2].buf, alpha, g, rows)
	case ops.KindAttentionGrad:
		a := ins.info.Attn
		rows, _ := dims(in[0])
		nq, nk := in[0].n, in[1].n
		var alpha, dA *kernels.DevBuf
		dO := in[3]
		if a.Masked {
			alpha, dO, dA = in[3].buf, in[4], out.Slice(nq+2*nk, in[3].n)
		}
		g := kernels.AttnGeom{QHeads: a.QHeads, KVHeads: a.KVHeads, HeadD: a.HeadD, SeqLen: a.SeqLen, TensorCores: !r.fp32GEMM}
		if ins.attn16 {
			err = d.AttentionBackwardBF16(out.Slice(0, nq), out.Slice(nq, nk), out.Slice(nq+nk, nk), dA, in[0].b16.buf, in[1].b16.buf, in[2].b16.buf,
				alpha, ins.fwd.out.buf, ins.fwd.stats.buf, dO.buf, g, rows)
			break
		}
		err = d.AttentionBackward(out.Slice(0, nq), out.Slice(nq, nk), out.Slice(nq+nk, nk), dA, in[0].buf, in[1].buf, in[2].buf,
			alpha, ins.fwd.out.buf, ins.fwd.stats.buf, dO.buf, g, rows)
	case ops.KindHardCount:
		rows, H := dims(in[0])
		T := ins.info.SeqLen
		if ins.info.PerHead {
			err = d.DMCHeadCount(out, in[0].buf, rows/T, T, H)
		} else {
			err = d.DMCHardCount(out, in[0].buf, rows/T, T*H)
		}
	case ops.KindHardCountGrad:
		rows, H := dims(in[0])
		T := ins.info.SeqLen
		if ins.info.PerHead {
			err = d.DMCHeadCountBackward(out, in[1].buf, rows/T, T, H)
		} else {
			err = d.DMCHardCountBackward(out, in[1].buf, rows/T, T*H)
		}
	default:
		err = fmt.Errorf("no device kernel for %s", ins.info.Kind)
	}
	return err
}

// invCount is 1 / (counted targets), the loss's mean (0 when nothing counts, as on the CPU).
func (r *runner) invCount() float32 {
	if r.in.ValidTargets == 0 {
		return 0
	}
	return float32(1 / float64(r.in.ValidTargets))
}

// Update implements step.Optimizer: mean over micro-batches, global-norm clipping and AdamW,
// all on the device; one float64 comes back (the norm, to skip a non-finite update).
func (m *Model) Update(h step.AdamW, micro int, maxNorm, lr float64) (norm float64, err error) {
	err = m.r.timed("optimizer (gradient norm, clip, AdamW)", func() error {
		var e error
		norm, e = m.update(h, micro, maxNorm, lr)
		return e
	})
	return norm, err
}

func (m *Model) update(h step.AdamW, micro int, maxNorm, lr float64) (float64, error) {
	r := m.r
	if len(h.Decay) != len(r.params) {
		return 0, fmt.Errorf("device: %d weight-decay flags for %d parameters", len(h.Decay), len(r.params))
	}
	if m.comm != nil {
		// Sum over the group first (one NCCL group call); micro counts every rank's micro-batches.
		if err := m.comm.Group(func() error {
			for _, p := range r.params {
				if p.g != nil {
					if err := m.comm.AllReduceSum(p.g); err != nil {
						return err
					}
				}
			}
			return nil
		}); err != nil {
			return 0, fmt.Errorf("device: sum the gradients over %d ranks: %w", m.comm.Size(), err)
		}
	}
	var grads []*kernels.DevBuf
	for _, p := range r.params {
		if p.g == nil {
			continue // frozen
		}
		if micro > 1 {
			if err := r.dev.Scale(p.g, float32(1/float64(micro))); err != nil {
				return 0, err
			}
		}
		if p.sel.All {
			grads = append(grads, p.g)
			continue
		}
		// A row subset: its rows as a compact block for the norm and the update.
		if err := r.dev.GatherRows(p.cg, p.g, p.rows, len(p.sel.Rows), p.cols); err != nil {
			return 0, err
		}
		grads = append(grads, p.cg)
	}
	if err := r.dev.GlobalNorm(m.norm, m.clip, maxNorm, grads...); err != nil {
		return 0, err
	}
	nv := make([]float64, 1)
	if err := m.norm.Download(nv); err != nil {
		return 0, err
	}
	if !finite(nv[0]) {
		return nv[0], nil
	}
	for i, p := range r.params {
		if p.g == nil {
			continue
		}
		hs := kernels.AdamWStep{Beta1: h.Beta1, Beta2: h.Beta2, Eps: h.Eps, WeightDecay: h.WeightDecay, LR: lr, Step: h.T, Decay: h.Decay[i]}
		if p.sel.All {
			if err := r.dev.AdamW(p.w, p.w16, p.g, p.m, p.v, m.clip, hs); err != nil {
				return 0, err
			}
			continue
		}
		nr := len(p.sel.Rows)
		if err := r.dev.GatherRows(p.cw, p.w, p.rows, nr, p.cols); err != nil {
			return 0, err
		}
		if err := r.dev.AdamW(p.cw, nil, p.cg, p.m, p.v, m.clip, hs); err != nil {
			return 0, err
		}
		if err := r.dev.ScatterRows(p.w, p.cw, p.rows, nr, p.cols); err != nil {
			return 0, err
		}
		if err := r.dev.CastBF16(p.w16, p.w); err != nil {
			return 0, err
		}
	}
	return nv[0], nil
}

// Pull implements step.Optimizer.
func (m *Model) Pull(mo, v [][]float32) error {
	if err := m.pullValues(); err != nil {
		return err
	}
	for i, p := range m.r.params {
		if p.m == nil {
			continue
		}
		if err := p.m.Download(mo[i]); err != nil {
			return err
		}
		if err := p.v.Download(v[i]); err != nil {
			return err
		}
	}
	return nil
}

// Push implements step.Optimizer.
func (m *Model) Push(mo, v [][]float32) error {
	if err := m.r.pushWeights(); err != nil {
		return err
	}
	for i, p := range m.r.params {
		if p.m == nil {
			continue
		}
		if err := p.m.Upload(mo[i]); err != nil {
			return err
		}
		if err := p.v.Upload(v[i]); err != nil {
			return err
		}
	}
	return nil
}

// HostGrads copies the accumulated gradient into Params()' Grad slices (tests, diagnostics).
func (m *Model) HostGrads() error {
	ps := m.r.g.Params()
	for i, p := range m.r.params {
		if p.g == nil {
			clear(ps[i].Grad) // frozen (or a forward-only model)
			continue
		}
		if err := p.g.Download(ps[i].Grad); err != nil {
			return err
		}
	}
	return nil
}

type opTime struct {
	n int
	d time.Duration
}

// Profile turns per-op timing on (every op is followed by a device sync, which slows the step)
// or off; ProfileReport lists the accumulated time per op kind, largest first.
func (m *Model) Profile(on bool) {
	for _, r := range []*runner{m.r, m.teacher} {
		if r != nil {
			r.profile = nil
			if on {
				r.profile = map[string]*opTime{}
			}
		}
	}
}

// ProfileReport formats the per-op times collected since Profile(true).
func (m *Model) ProfileReport() string {
	all := map[string]*opTime{}
	var total time.Duration
	for _, r := range []*runner{m.r, m.teacher} {
		if r == nil {
			continue
		}
		for k, v := range r.profile {
			a := all[k]
			if a == nil {
				a = &opTime{}
				all[k] = a
			}
			a.n += v.n
			a.d += v.d
			total += v.d
		}
	}
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return all[keys[i]].d > all[keys[j]].d })
	var b strings.Builder
	fmt.Fprintf(&b, "%-32s %8s %10s %6s\n", "op", "calls", "ms", "share")
	for _, k := range keys {
		v := all[k]
		fmt.Fprintf(&b, "%-32s %8d %10.2f %5.1f%%\n", k, v.n, float64(v.d.Microseconds())/1e3, 100*float64(v.d)/float64(max(total, 1)))
	}
	return b.String()
}

// MemInfo reports the device's free and total memory in bytes.
func (m *Model) MemInfo() (free, total int64) { return m.r.dev.MemInfo() }

// Sync waits for the device's queued work.
func (m *Model) Sync() error { return m.r.dev.Sync() }

// JoinGroup makes the model rank of a size-rank data-parallel group named id (rank 0 draws it
// with kernels.NCCLGetUniqueID): Update then sums the gradients over the group before dividing
// by the micro-batches of all ranks, and GroupComm gives the trainer the same group for its
// loss sums. It blocks until every rank has joined; Close leaves the group.
func (m *Model) JoinGroup(id kernels.NCCLUniqueID, rank, size int) error {
	if m.comm != nil {
		return fmt.Errorf("device: already rank %d of a group of %d", m.comm.Rank(), m.comm.Size())
	}
	c, err := m.r.dev.NCCLInit(id, rank, size)
	if err != nil {
		return err
	}
	m.comm = c
	return nil
}

// GroupSize is the size of the model's group (1 without one): a trainer.Run with a group of
// that size leaves the gradient sums to Update (step.DataParallel).
func (m *Model) GroupSize() int {
	if m.comm == nil {
		return 1
	}
	return m.comm.Size()
}

// GroupComm is the model's group as trainer.Comm: the step's loss sums and flags go through a
// small device buffer; host float32 buffers (unused by a device model's run) are copied through
// the device.
func (m *Model) GroupComm() *GroupComm { return &GroupComm{m: m} }

// GroupComm implements trainer.Comm over a model's NCCL communicator.
type GroupComm struct{ m *Model }

func (g *GroupComm) Rank() int { return g.m.comm.Rank() }
func (g *GroupComm) Size() int { return g.m.comm.Size() }

func (g *GroupComm) AllReduceSum64(vals []float64) error {
	m := g.m
	n := max(len(vals), 1) // an empty call is a barrier
	if m.scalar == nil || m.scalar.Len() < n {
		if m.scalar != nil {
			m.scalar.Free()
		}
		b, err := m.r.dev.Alloc(kernels.F64, max(n, 16))
		if err != nil {
			return err
		}
		m.scalar = b
	}
	buf := m.scalar.Slice(0, n)
	host := make([]float64, n)
	copy(host, vals)
	if err := buf.Upload(host); err != nil {
		return err
	}
	if err := m.comm.AllReduceSum(buf); err != nil {
		return err
	}
	if err := buf.Download(host); err != nil {
		return err
	}
	copy(vals, host)
	return nil
}

func (g *GroupComm) AllReduceSum(bufs [][]float32) error {
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		d, err := g.m.r.dev.FromF32(b)
		if err != nil {
			return err
		}
		err = g.m.comm.AllReduceSum(d)
		if err == nil {
			err = d.Download(b)
		}
		d.Free()
		if err != nil {
			return err
		}
	}
	return nil
}

// Abort tears the communicator down so that peers waiting on this rank fail instead of hanging.
func (g *GroupComm) Abort(error) { g.m.comm.Abort() }
