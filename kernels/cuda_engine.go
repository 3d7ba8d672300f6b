//go:build dmc_cuda

package kernels

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"sync"

	"github.com/dmc-project/dmc/model"
)

var (
	devOnce sync.Once
	devErr  error
	theDev  *device
)

// getDevice opens the GPU once per process.
func getDevice(ordinal int) (*device, error) {
	devOnce.Do(func() { theDev, devErr = openDevice(ordinal) })
	return theDev, devErr
}

// Available reports whether a usable GPU, driver and cuBLAS are present.
func Available() error {
	_, err := getDevice(0)
	return err
}

// layerWeights are one block's device tensors: bf16 matrices (q/k/v and gate/up fused), fp32 norms.
type layerWeights struct {
	attnNorm, ffnNorm, wqkv, wo, w13, w2 devPtr
}

type sequence struct{ slot, pos int }

// profiler times the ops of decode steps with CUDA events (DMC_PROFILE=1): each mark closes the
// interval since the previous mark under the previous mark's name.
type profiler struct {
	d      *device
	names  []string
	events []*event
	total  map[string]float64
	steps  int
}

func (p *profiler) mark(name string) {
	if p == nil {
		return
	}
	ev, err := p.d.newEvent()
	if err != nil {
		return
	}
	ev.record()
	p.names, p.events = append(p.names, name), append(p.events, ev)
}

func (p *profiler) flushIf(on bool) {
	if on {
		p.flush()
	}
}

// flush waits for the step and accumulates its intervals.
func (p *profiler) flush() {
	if p == nil || len(p.events) == 0 {
		return
	}
	for i := 0; i+1 < len(p.events); i++ {
		ms, err := elapsed(p.events[i], p.events[i+1])
		if err == nil {
			p.total[p.names[i]] += ms
		}
	}
	for _, ev := range p.events {
		ev.destroy()
	}
	p.names, p.events = nil, nil
	p.steps++
}

// Profile returns the mean milliseconds per decode step of each op kind (nil unless the engine
// was created with DMC_PROFILE set).
func Profile(e Engine) map[string]float64 {
	en, ok := e.(*engine)
	if !ok || en.prof == nil || en.prof.steps == 0 {
		return nil
	}
	out := map[string]float64{}
	for k, v := range en.prof.total {
		out[k] = v / float64(en.prof.steps)
	}
	return out
}

type engine struct {
	d      *device
	cfg    model.Config
	opt    Options
	g      geometry
	cache  *kvCache
	embed  devPtr
	output devPtr
	norm   devPtr
	layers []layerWeights
	allocs []devPtr
	mem    Memory

	// decode scratch, MaxBatch rows
	x, xn, qkv, q, att, h13, h, logits, part, io devPtr
	score                                        devPtr // DecodeScore: float64 log-probs [MaxBatch], then int32 targets
	// prefill scratch, PrefillTokens rows
	px, pxn, pqkv, ph13, ph, pio devPtr
	psc                          prefillScratch
	seqs                         map[int]*sequence
	freeSlots                    []int
	nextID                       int
	prof                         *profiler // decode-step op timing, DMC_PROFILE=1
	profOn                       bool      // marks are recorded (decode only)
	decodes                      int
	graphs                       map[graphKey]*graph
	seen                         map[graphKey]bool
	fused                        map[fuseKey]bool // fuse's decisions
	noGraphs                     bool
}

func (e *engine) mark(name string) {
	if e.profOn {
		e.prof.mark(name)
	}
}

// scratchBytes is the engine's activation memory: per batch slot and fixed.
func scratchBytes(cfg model.Config, opt Options, sms int) (perSeq, fixed int64) {
	g := geometryOf(cfg)
	d, hd, V := int64(cfg.Dim), int64(cfg.HiddenDim), int64(cfg.VocabSize)
	qd, kvd := int64(g.qd), int64(g.kvd)
	perSeq = d*4 + d*2 + (qd+2*kvd)*4 + qd*4 + qd*2 + 2*hd*4 + hd*2 + V*4 + 5*4 + 12 + int64(g.Hq*(g.D+2))*4 + 6*int64(g.Hq)*8
	PT := int64(opt.PrefillTokens)
	fixed = PT*(d*4+d*2+(qd+2*kvd)*4+2*hd*4+hd*2+6*4) + // px pxn pqkv ph13 ph pio
		PT*(qd*2+2*kvd*2+4*int64(g.Hkv)*4+qd*2) + // qPre kPre vPre alpha omega slot seg out
		scoreElems(g, opt.MaxContext)*6 +
		int64(attnTargetBlocks(sms)*g.G*(g.D+2))*4
	return
}

func weightBytes(cfg model.Config) int64 {
	g := geometryOf(cfg)
	d, hd, V, L := int64(cfg.Dim), int64(cfg.HiddenDim), int64(cfg.VocabSize), int64(cfg.NLayers)
	mats := V*d + L*(d*int64(g.qd+2*g.kvd)+int64(g.qd)*d+3*hd*d)
	if !cfg.TieEmbeddings {
		mats += V * d
	}
	return mats*2 + (2*L*d+d)*4
}

// reserveBytes is left free for cuBLAS workspaces and the driver.
const reserveBytes = 768 << 20

// FitBatch is the largest batch of sequences of slotsPerSeq cache slots per (layer, KV head)
// that fits in the GPU's free memory next to the weights and scratch of cfg with opt.
func FitBatch(cfg model.Config, opt Options, slotsPerSeq int) (int, error) {
	opt, err := opt.validate(cfg)
	if err != nil {
		return 0, err
	}
	d, err := getDevice(opt.Device)
	if err != nil {
		return 0, err
	}
	d.enter()
	defer d.exit()
	free, _ := d.memInfo()
	g := geometryOf(cfg)
	perSeq, fixed := scratchBytes(cfg, opt, d.sms)
	tables, state := tableBytes(g, opt)
	pages := int64(g.L*g.Hkv) * int64((slotsPerSeq+pageTokens-1)/pageTokens)
	avail := free - weightBytes(cfg) - fixed - reserveBytes
	if avail <= 0 {
		return 0, nil
	}
	return int(avail / (perSeq + tables + state + pages*(pageBytesOf(g)+4))), nil
}

// NewEngine uploads w (converted to bf16) to the GPU.
func NewEngine(w *model.Weights, opt Options) (Engine, error) {
	if err := w.CheckShapes(); err != nil {
		return nil, err
	}
	e, err := newEngine(w.Config, opt)
	if err != nil {
		return nil, err
	}
	if err := e.uploadWeights(w); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// NewRandomEngine draws bf16 weights on the GPU like model.RandomParams (normal, std 0.02,
// output projections 0.02/√(2L), norms 1), deterministic in seed. For benchmarks at real scale
// without a checkpoint: the decode cost does not depend on the weight values.
func NewRandomEngine(cfg model.Config, seed uint64, opt Options) (Engine, error) {
	e, err := newEngine(cfg, opt)
	if err != nil {
		return nil, err
	}
	if err := e.randomWeights(seed); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func newEngine(cfg model.Config, opt Options) (*engine, error) {
	opt, err := opt.validate(cfg)
	if err != nil {
		return nil, err
	}
	d, err := getDevice(opt.Device)
	if err != nil {
		return nil, err
	}
	d.enter()
	defer d.exit()
	e := &engine{d: d, cfg: cfg, opt: opt, g: geometryOf(cfg), seqs: map[int]*sequence{},
		graphs: map[graphKey]*graph{}, seen: map[graphKey]bool{}, fused: map[fuseKey]bool{}, noGraphs: os.Getenv("DMC_NO_GRAPHS") != ""}
	free, total := d.memInfo()
	e.mem.DeviceFree, e.mem.DeviceTotal = free, total
	perSeq, fixed := scratchBytes(cfg, opt, d.sms)
	tables, state := tableBytes(e.g, opt)
	need := weightBytes(cfg) + fixed + int64(opt.MaxBatch)*(perSeq+tables+state) + reserveBytes
	minPool := int64(e.g.L*e.g.Hkv) * int64((opt.MaxContext+pageTokens-1)/pageTokens) * pageBytesOf(e.g)
	if need+minPool > free {
		return nil, fmt.Errorf("model %q with batch %d and context %d needs %.1f GiB of GPU memory (weights %.1f GiB, "+
			"one full sequence of KV cache %.2f GiB) but %s has %.1f GiB free: use a smaller model, a smaller batch or a "+
			"shorter context", cfg.Name, opt.MaxBatch, opt.MaxContext, gib(need+minPool), gib(weightBytes(cfg)), gib(minPool),
			d.name, gib(free))
	}
	// The pool never needs more pages than the block tables can address (every row full), and
	// each page also costs 4 bytes of free list.
	pb := pageBytesOf(e.g)
	addressable := int64(opt.MaxBatch*e.g.L*e.g.Hkv) * int64((opt.MaxContext+pageTokens-1)/pageTokens)
	poolBytes := opt.KVPoolBytes
	if poolBytes <= 0 {
		poolBytes = min((free-need)/(pb+4)*pb, addressable*pb)
	}
	if e.cache, err = newKVCache(d, cfg, opt, poolBytes); err != nil {
		return nil, err
	}
	e.mem.KVPool, e.mem.DMCState = e.cache.memPool, e.cache.memState
	e.mem.BlockTables = e.cache.memTable
	e.mem.PageTokens, e.mem.Pages, e.mem.PageBytes = pageTokens, e.cache.nPages, e.cache.pageBytes
	if err := e.allocScratch(); err != nil {
		e.Close()
		return nil, err
	}
	for s := opt.MaxBatch - 1; s >= 0; s-- {
		e.freeSlots = append(e.freeSlots, s)
	}
	if os.Getenv("DMC_PROFILE") != "" {
		e.prof = &profiler{d: d, total: map[string]float64{}}
	}
	return e, nil
}

func (e *engine) alloc(n int64, what string) (devPtr, error) {
	p, err := e.d.alloc(n, what)
	if err == nil {
		e.allocs = append(e.allocs, p)
	}
	return p, err
}

func (e *engine) allocScratch() error {
	c, g, B, PT := e.cfg, e.g, int64(e.opt.MaxBatch), int64(e.opt.PrefillTokens)
	d, hd, V := int64(c.Dim), int64(c.HiddenDim), int64(c.VocabSize)
	qd, kvd := int64(g.qd), int64(g.kvd)
	var err error
	type buf struct {
		p *devPtr
		n int64
	}
	sElems := scoreElems(g, e.opt.MaxContext)
	e.psc.sElems, e.psc.stride = sElems, int(PT)
	e.psc.ptrCap = 6 * g.Hq * int(min(B, PT)) * 2
	for _, b := range []buf{
		{&e.x, B * d * 4}, {&e.xn, B * d * 2}, {&e.qkv, B * (qd + 2*kvd) * 4}, {&e.q, B * qd * 4}, {&e.att, B * qd * 2},
		{&e.h13, B * 2 * hd * 4}, {&e.h, B * hd * 2}, {&e.logits, B * V * 4}, {&e.io, 5*B*4 + 16}, {&e.score, B * 12},
		{&e.part, partFloats(g, e.opt.MaxBatch, e.d.sms) * 4},
		{&e.px, PT * d * 4}, {&e.pxn, PT * d * 2}, {&e.pqkv, PT * (qd + 2*kvd) * 4}, {&e.ph13, PT * 2 * hd * 4},
		{&e.ph, PT * hd * 2}, {&e.pio, (2*PT + 6*min(B, PT)) * 4},
		{&e.psc.qPre, PT * qd * 2}, {&e.psc.kPre, PT * kvd * 2}, {&e.psc.vPre, PT * kvd * 2}, {&e.psc.alpha, PT * int64(g.Hkv) * 4},
		{&e.psc.out, PT * qd * 2}, {&e.psc.sBuf, sElems * 4}, {&e.psc.pBuf, sElems * 2}, {&e.psc.ptrs, int64(e.psc.ptrCap) * 8},
		{&e.psc.omega, PT * int64(g.Hkv) * 4}, {&e.psc.slot, PT * int64(g.Hkv) * 4}, {&e.psc.segBeg, PT * int64(g.Hkv) * 4},
	} {
		if *b.p, err = e.alloc(b.n, "activation scratch"); err != nil {
			return err
		}
		e.mem.Scratch += b.n
	}
	return nil
}

// bf16 conversion with round-to-nearest-even (NaN stays NaN).
func toBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return 0x7fc0
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

func fromBF16(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// uploadBF16 converts the concatenation of parts to bf16 and copies it to a new allocation.
func (e *engine) uploadBF16(what string, parts ...[]float32) (devPtr, error) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	dst, err := e.alloc(int64(n)*2, what)
	if err != nil {
		return 0, err
	}
	e.mem.Weights += int64(n) * 2
	const chunk = 1 << 22
	buf := make([]uint16, chunk)
	off := 0
	for _, p := range parts {
		for lo := 0; lo < len(p); lo += chunk {
			hi := min(lo+chunk, len(p))
			src := p[lo:hi]
			var wg sync.WaitGroup
			workers := runtime.GOMAXPROCS(0)
			step := (len(src) + workers - 1) / workers
			for w := 0; w < len(src); w += step {
				wg.Add(1)
				go func(a, b int) {
					defer wg.Done()
					for i := a; i < b; i++ {
						buf[i] = toBF16(src[i])
					}
				}(w, min(w+step, len(src)))
			}
			wg.Wait()
			if err := uploadSlice(e.d, dst+uint64(off*2), buf[:len(src)]); err != nil {
				return 0, err
			}
			off += len(src)
		}
	}
	return dst, nil
}

func (e *engine) uploadF32(what string, v []float32) (devPtr, error) {
	p, err := e.alloc(int64(len(v))*4, what)
	if err == nil {
		e.mem.Weights += int64(len(v)) * 4
		err = uploadSlice(e.d, p, v)
	}
	return p, err
}

func (e *engine) uploadWeights(w *model.Weights) error {
	e.d.enter()
	defer e.d.exit()
	var err error
	if e.embed, err = e.uploadBF16("embeddings", w.Embed); err != nil {
		return err
	}
	e.output = e.embed
	if !e.cfg.TieEmbeddings {
		if e.output, err = e.uploadBF16("classifier", w.Output); err != nil {
			return err
		}
	}
	if e.norm, err = e.uploadF32("final norm", w.FinalNorm); err != nil {
		return err
	}
	e.layers = make([]layerWeights, len(w.Layers))
	for i := range w.Layers {
		l, dl := &w.Layers[i], &e.layers[i]
		for _, s := range []struct {
			p     *devPtr
			parts [][]float32
		}{{&dl.wqkv, [][]float32{l.Wq, l.Wk, l.Wv}}, {&dl.wo, [][]float32{l.Wo}}, {&dl.w13, [][]float32{l.W1, l.W3}}, {&dl.w2, [][]float32{l.W2}}} {
			if *s.p, err = e.uploadBF16(fmt.Sprintf("layer %d weights", i), s.parts...); err != nil {
				return err
			}
		}
		if dl.attnNorm, err = e.uploadF32("norms", l.AttnNorm); err != nil {
			return err
		}
		if dl.ffnNorm, err = e.uploadF32("norms", l.FFNNorm); err != nil {
			return err
		}
	}
	return e.d.sync()
}

func (e *engine) randomWeights(seed uint64) error {
	e.d.enter()
	defer e.d.exit()
	c, g := e.cfg, e.g
	d, hd, V := int64(c.Dim), int64(c.HiddenDim), int64(c.VocabSize)
	resid := float32(0.02 / math.Sqrt(2*float64(c.NLayers)))
	tensor := 0
	fill := func(p devPtr, n int64, std float32) error {
		tensor++
		return e.d.launch("fill_normal_bf16", dim3{x: 4096}, dim3{x: 256}, 0,
			new(args).p(p).i64(n).i64(int64(seed*1000003+uint64(tensor))).f(std))
	}
	mat := func(n int64, std float32, what string) (devPtr, error) {
		p, err := e.alloc(n*2, what)
		if err == nil {
			e.mem.Weights += n * 2
			err = fill(p, n, std)
		}
		return p, err
	}
	ones := func(n int64) (devPtr, error) {
		p, err := e.alloc(n*4, "norms")
		if err == nil {
			e.mem.Weights += n * 4
			err = e.d.launch("fill_f32", dim3{x: int((n + 255) / 256)}, dim3{x: 256}, 0, new(args).p(p).i64(n).f(1))
		}
		return p, err
	}
	var err error
	if e.embed, err = mat(V*d, 0.02, "embeddings"); err != nil {
		return err
	}
	e.output = e.embed
	if !c.TieEmbeddings {
		if e.output, err = mat(V*d, 0.02, "classifier"); err != nil {
			return err
		}
	}
	if e.norm, err = ones(d); err != nil {
		return err
	}
	e.layers = make([]layerWeights, c.NLayers)
	for i := range e.layers {
		l := &e.layers[i]
		// q, k, v rows share std 0.02, so the fused matrix is drawn at once.
		for _, s := range []struct {
			p   *devPtr
			n   int64
			std float32
		}{{&l.wqkv, int64(g.qd+2*g.kvd) * d, 0.02}, {&l.wo, d * int64(g.qd), resid}, {&l.w13, 2 * hd * d, 0.02}, {&l.w2, d * hd, resid}} {
			if *s.p, err = mat(s.n, s.std, fmt.Sprintf("layer %d weights", i)); err != nil {
				return err
			}
		}
		if l.attnNorm, err = ones(d); err != nil {
			return err
		}
		if l.ffnNorm, err = ones(d); err != nil {
			return err
		}
	}
	return e.d.sync()
}

// downloadWeights copies the device weights (bf16, widened to fp32) into a model.Weights, so the
// CPU reference can run the very same model.
func (e *engine) downloadWeights() (*model.Weights, error) {
	e.d.enter()
	defer e.d.exit()
	w, err := model.NewParams[float32](e.cfg)
	if err != nil {
		return nil, err
	}
	get := func(src devPtr, parts ...[]float32) error {
		n := 0
		for _, p := range parts {
			n += len(p)
		}
		buf := make([]uint16, n)
		if err := downloadSlice(e.d, buf, src); err != nil {
			return err
		}
		off := 0
		for _, p := range parts {
			for i := range p {
				p[i] = fromBF16(buf[off+i])
			}
			off += len(p)
		}
		return nil
	}
	getF := func(src devPtr, dst []float32) error { return downloadSlice(e.d, dst, src) }
	if err := get(e.embed, w.Embed); err != nil {
		return nil, err
	}
	if !e.cfg.TieEmbeddings {
		if err := get(e.output, w.Output); err != nil {
			return nil, err
		}
	}
	if err := getF(e.norm, w.FinalNorm); err != nil {
		return nil, err
	}
	for i := range w.Layers {
		l, dl := &w.Layers[i], &e.layers[i]
		for _, err := range []error{get(dl.wqkv, l.Wq, l.Wk, l.Wv), get(dl.wo, l.Wo), get(dl.w13, l.W1, l.W3), get(dl.w2, l.W2),
			getF(dl.attnNorm, l.AttnNorm), getF(dl.ffnNorm, l.FFNNorm)} {
			if err != nil {
				return nil, err
			}
		}
	}
	return w, nil
}

func (e *engine) Config() model.Config { return e.cfg }

// LogProbs implements model.Decoder by decoding token by token (the prompt logits of a
// prefill are not kept).
func (e *engine) LogProbs(tokens []int) ([]float64, error) {
	return model.LogProbsByDecoding(e, tokens)
}
func (e *engine) Memory() Memory { return e.mem }
func (e *engine) Device() string { return e.d.describe() }

func (e *engine) Close() error {
	if e.d == nil {
		return nil
	}
	e.d.enter()
	defer e.d.exit()
	e.d.sync()
	for _, g := range e.graphs {
		g.destroy()
	}
	e.graphs = nil
	for _, p := range e.allocs {
		e.d.free(p)
	}
	e.allocs = nil
	if e.cache != nil {
		e.cache.free()
		e.cache = nil
	}
	e.d = nil
	return nil
}

func (e *engine) normThreads() int { return min(1024, max(32, (e.cfg.Dim/4+31)/32*32)) }

// rmsnorm writes the bf16 RMSNorm of rows of x; the single-pass kernel when dim = 4·threads
// with a whole number of warps.
func (e *engine) rmsnorm(x, w, out devPtr, rows int) error {
	d, eps := e.cfg.Dim, float32(e.cfg.NormEps)
	if d%128 == 0 && d/4 <= 1024 {
		return e.d.launch("rmsnorm_bf16_v4", dim3{x: rows}, dim3{x: d / 4}, 0, new(args).p(x).p(w).p(out).i(d).f(eps))
	}
	return e.d.launch("rmsnorm_bf16", dim3{x: rows}, dim3{x: e.normThreads()}, 0, new(args).p(x).p(w).p(out).i(d).f(eps))
}

// fuseKey names a fused decode op (ffn: the gate/up GEMV with SwiGLU) at a row count.
type fuseKey struct {
	op   string
	rows int
}

// fuse says whether op runs as its fused kernel at this row count: decided once, by timing the
// fused kernel against the launches it replaces (unfused, whose GEMM is tuned by its first run)
// on the real buffers, before any step is captured in a graph (the first step of a batch size
// runs directly). Both write only the op's outputs, so the runs leave nothing behind.
func (e *engine) fuse(op string, rows int, fused, unfused func() error) bool {
	if !decodeFusion || rows > gemvMaxRows || e.cfg.Dim%8 != 0 {
		return false
	}
	k := fuseKey{op, rows}
	if v, ok := e.fused[k]; ok {
		return v
	}
	if forceFusion {
		e.fused[k] = true
		return true
	}
	ok := func(f func() error) func() bool { return func() bool { return f() == nil } }
	tu := e.d.timeRuns(20, ok(unfused))
	tf := e.d.timeRuns(20, ok(fused))
	e.fused[k] = tf < tu
	return tf < tu
}

// layersForward runs the transformer layers on rows of x with the given attention step. At
// decode's few rows the SwiGLU runs inside the gate/up GEMV where that is faster (fuse).
func (e *engine) layersForward(x, xn, qkv, h13, h devPtr, rows int, attention func(layer int) (devPtr, error)) error {
	c, g := e.cfg, e.g
	for li := range e.layers {
		l := &e.layers[li]
		e.mark("norm")
		if err := e.rmsnorm(x, l.attnNorm, xn, rows); err != nil {
			return err
		}
		e.mark("gemm_qkv")
		if err := e.d.linear(qkv, typeF32, xn, l.wqkv, rows, c.Dim, g.qd+2*g.kvd, false); err != nil {
			return err
		}
		att, err := attention(li)
		if err != nil {
			return err
		}
		e.mark("gemm_o")
		if err := e.d.linear(x, typeF32, att, l.wo, rows, g.qd, c.Dim, true); err != nil {
			return err
		}
		e.mark("norm")
		if err := e.rmsnorm(x, l.ffnNorm, xn, rows); err != nil {
			return err
		}
		fused := func() error { return e.d.gemvSwiGLU(h, xn, l.w13, rows, c.Dim, c.HiddenDim) }
		unfused := func() error {
			e.mark("gemm_w13")
			if err := e.d.linear(h13, typeF32, xn, l.w13, rows, c.Dim, 2*c.HiddenDim, false); err != nil {
				return err
			}
			e.mark("swiglu")
			return e.d.launch("swiglu_bf16", dim3{x: (c.HiddenDim + 255) / 256, y: rows}, dim3{x: 256}, 0, new(args).p(h13).p(h).i(c.HiddenDim))
		}
		run := unfused
		if e.fuse("ffn", rows, fused, unfused) {
			e.mark("gemm_w13_swiglu")
			run = fused
		}
		if err := run(); err != nil {
			return err
		}
		e.mark("gemm_w2")
		if err := e.d.linear(x, typeF32, h, l.w2, rows, c.HiddenDim, c.Dim, true); err != nil {
			return err
		}
	}
	return nil
}

// head computes logits and greedy tokens for rows of e.x (already gathered), writes next into
// nextDev, and downloads what was asked for.
func (e *engine) head(rows int, nextDev devPtr, wantLogits bool) ([]int, [][]float32, error) {
	if err := e.headKernels(rows, nextDev); err != nil {
		return nil, nil, err
	}
	return e.headResults(rows, nextDev, wantLogits)
}

func (e *engine) headKernels(rows int, nextDev devPtr) error {
	c := e.cfg
	if err := e.rmsnorm(e.x, e.norm, e.xn, rows); err != nil {
		return err
	}
	if err := e.d.linear(e.logits, typeF32, e.xn, e.output, rows, c.Dim, c.VocabSize, false); err != nil {
		return err
	}
	return e.d.launch("argmax_rows", dim3{x: rows}, dim3{x: 1024}, 0, new(args).p(e.logits).p(nextDev).i(c.VocabSize))
}

func (e *engine) headResults(rows int, nextDev devPtr, wantLogits bool) ([]int, [][]float32, error) {
	c := e.cfg
	next32 := make([]int32, rows)
	if err := downloadSlice(e.d, next32, nextDev); err != nil {
		return nil, nil, err
	}
	if err := e.checkStatus(); err != nil {
		return nil, nil, err
	}
	next := make([]int, rows)
	for i, v := range next32 {
		next[i] = int(v)
	}
	var logits [][]float32
	if wantLogits {
		all := make([]float32, rows*c.VocabSize)
		if err := downloadSlice(e.d, all, e.logits); err != nil {
			return nil, nil, err
		}
		for r := 0; r < rows; r++ {
			logits = append(logits, all[r*c.VocabSize:(r+1)*c.VocabSize:(r+1)*c.VocabSize])
		}
	}
	return next, logits, nil
}

var errPoolExhausted = errors.New("the KV page pool is exhausted (the sequences grew beyond the cache memory): " +
	"release sequences, lower the batch, or give the pool more memory")

func (e *engine) checkStatus() error {
	s, err := e.cache.statusFlags()
	if err != nil {
		return err
	}
	if s&1 != 0 {
		e.cache.clearStatus()
		return errPoolExhausted
	}
	return nil
}

func (e *engine) checkTokens(toks []int) error {
	for i, t := range toks {
		if t < 0 || t >= e.cfg.VocabSize {
			return fmt.Errorf("token id %d at index %d is outside the vocabulary [0, %d)", t, i, e.cfg.VocabSize)
		}
	}
	return nil
}

func (e *engine) Prefill(prompts [][]int, wantLogits bool) ([]int, []int, [][]float32, error) {
	if len(prompts) > len(e.freeSlots) {
		return nil, nil, nil, fmt.Errorf("%d new sequences but only %d of %d batch slots are free: release sequences or raise the maximum batch",
			len(prompts), len(e.freeSlots), e.opt.MaxBatch)
	}
	for i, p := range prompts {
		if len(p) == 0 {
			return nil, nil, nil, fmt.Errorf("prompt %d is empty", i)
		}
		if len(p) >= e.opt.MaxContext {
			return nil, nil, nil, fmt.Errorf("prompt %d has %d tokens; the engine's context is %d", i, len(p), e.opt.MaxContext)
		}
		if err := e.checkTokens(p); err != nil {
			return nil, nil, nil, fmt.Errorf("prompt %d: %w", i, err)
		}
	}
	e.d.enter()
	defer e.d.exit()
	var ids, next []int
	var logits [][]float32
	for lo := 0; lo < len(prompts); {
		hi, n := lo, 0
		for hi < len(prompts) && n+len(prompts[hi]) <= e.opt.PrefillTokens {
			n += len(prompts[hi])
			hi++
		}
		cids, cnext, clog, err := e.prefillChunk(prompts[lo:hi], wantLogits)
		if err != nil {
			e.Release(cids...)
			e.Release(ids...)
			return nil, nil, nil, err
		}
		ids, next, logits = append(ids, cids...), append(next, cnext...), append(logits, clog...)
		lo = hi
	}
	return ids, next, logits, nil
}

func (e *engine) prefillChunk(prompts [][]int, wantLogits bool) ([]int, []int, [][]float32, error) {
	g, PT := e.g, e.opt.PrefillTokens
	nSeq := len(prompts)
	MB := min(e.opt.MaxBatch, PT)
	// pio layout (int32): tokens[PT] tokSeq[PT] slots[MB] pos[MB] tokStart[MB] tokCount[MB] last[MB] next[MB]
	host := make([]int32, 2*PT+6*MB)
	seqs := make([]prefillSeq, nSeq)
	var ids []int
	N := 0
	for b, p := range prompts {
		slot := e.freeSlots[len(e.freeSlots)-1]
		e.freeSlots = e.freeSlots[:len(e.freeSlots)-1]
		e.nextID++
		e.seqs[e.nextID] = &sequence{slot: slot}
		ids = append(ids, e.nextID)
		seqs[b] = prefillSeq{start: N, count: len(p)}
		host[2*PT+b], host[2*PT+MB+b] = int32(slot), 0
		host[2*PT+2*MB+b], host[2*PT+3*MB+b], host[2*PT+4*MB+b] = int32(N), int32(len(p)), int32(N+len(p)-1)
		for i, t := range p {
			host[N+i], host[PT+N+i] = int32(t), int32(b)
		}
		N += len(p)
	}
	if err := uploadSlice(e.d, e.pio, host); err != nil {
		return ids, nil, nil, err
	}
	at := func(i int) devPtr { return e.pio + uint64(i*4) }
	io := e.psc.io(e.pqkv, g.qd+2*g.kvd, at(2*PT), at(2*PT+MB), at(2*PT+2*MB), at(2*PT+3*MB))
	maxN := 0
	for _, p := range prompts {
		maxN = max(maxN, len(p))
	}
	if err := e.d.launch("embed_gather", dim3{x: N}, dim3{x: 256}, 0, new(args).p(e.embed).p(e.pio).p(e.px).i(e.cfg.Dim)); err != nil {
		return ids, nil, nil, err
	}
	err := e.layersForward(e.px, e.pxn, e.pqkv, e.ph13, e.ph, N, func(layer int) (devPtr, error) {
		if err := e.cache.prefillUpdate(layer, nSeq, N, maxN, io, at(PT)); err != nil {
			return 0, err
		}
		return e.psc.out, e.cache.prefillAttention(seqs, &e.psc)
	})
	if err != nil {
		return ids, nil, nil, err
	}
	if err := e.d.launch("gather_rows", dim3{x: nSeq}, dim3{x: 256}, 0, new(args).p(e.px).p(at(2*PT+4*MB)).p(e.x).i(e.cfg.Dim)); err != nil {
		return ids, nil, nil, err
	}
	next, logits, err := e.head(nSeq, at(2*PT+5*MB), wantLogits)
	if err != nil {
		return ids, nil, nil, err
	}
	for b, id := range ids {
		e.seqs[id].pos = len(prompts[b])
	}
	return ids, next, logits, nil
}

func (e *engine) Decode(ids []int, tokens []int, wantLogits bool) ([]int, [][]float32, error) {
	B := len(ids)
	if B != len(tokens) {
		return nil, nil, fmt.Errorf("decode: %d sequences but %d tokens", B, len(tokens))
	}
	if B == 0 {
		return nil, nil, nil
	}
	if err := e.checkTokens(tokens); err != nil {
		return nil, nil, err
	}
	MB := e.opt.MaxBatch
	host := make([]int32, 3*MB)
	maxLen := 0
	seen := map[int]bool{}
	for b, id := range ids {
		s, ok := e.seqs[id]
		if !ok {
			return nil, nil, fmt.Errorf("decode: unknown sequence %d", id)
		}
		if seen[id] {
			return nil, nil, fmt.Errorf("decode: sequence %d listed twice", id)
		}
		seen[id] = true
		if s.pos >= e.opt.MaxContext {
			return nil, nil, fmt.Errorf("sequence %d reached the engine's context of %d tokens", id, e.opt.MaxContext)
		}
		host[b], host[MB+b], host[2*MB+b] = int32(tokens[b]), int32(s.pos), int32(s.slot)
		maxLen = max(maxLen, s.pos+1)
	}
	e.d.enter()
	defer e.d.exit()
	if err := uploadSlice(e.d, e.io, host); err != nil {
		return nil, nil, err
	}
	at := func(i int) devPtr { return e.io + uint64(i*4) }
	g := e.g
	io := updateIO{qkv: e.qkv, qkvStride: g.qd + 2*g.kvd, slots: at(2 * MB), pos: at(MB), qOut: e.q}
	e.profOn = e.prof != nil && e.decodes > 0 // the first step tunes GEMMs
	e.decodes++
	defer func() { e.profOn = false }()
	// enqueue puts the whole step (up to the greedy tokens) on the stream.
	enqueue := func() error {
		e.mark("embed")
		if err := e.d.launch("embed_gather", dim3{x: B}, dim3{x: 256}, 0, new(args).p(e.embed).p(e.io).p(e.x).i(e.cfg.Dim)); err != nil {
			return err
		}
		err := e.layersForward(e.x, e.xn, e.qkv, e.h13, e.h, B, func(layer int) (devPtr, error) {
			e.mark("kv_update")
			if err := e.cache.decodeUpdate(layer, B, io); err != nil {
				return 0, err
			}
			e.mark("attention")
			return e.att, e.cache.decodeAttention(layer, B, maxLen, e.q, at(2*MB), e.part, e.att, 0)
		})
		if err != nil {
			return err
		}
		e.mark("head")
		return e.headKernels(B, at(3*MB))
	}
	if err := e.runStep(graphKey{B, e.cache.splits(B, maxLen)}, enqueue); err != nil {
		return nil, nil, err
	}
	next, logits, err := e.headResults(B, at(3*MB), wantLogits)
	e.mark("end")
	e.prof.flushIf(e.profOn)
	if err != nil {
		return nil, nil, err
	}
	for _, id := range ids {
		e.seqs[id].pos++
	}
	return next, logits, nil
}

// DecodeScore implements model.TargetScorer: Decode, then the log-softmax of each row's
// logits at its target on the GPU (logprob_rows), so that B numbers come back instead of the
// B × vocabulary logits.
func (e *engine) DecodeScore(ids, tokens, targets []int) ([]int, []float64, error) {
	if len(targets) != len(ids) {
		return nil, nil, fmt.Errorf("decode score: %d sequences but %d targets", len(ids), len(targets))
	}
	if err := e.checkTokens(targets); err != nil {
		return nil, nil, err
	}
	next, _, err := e.Decode(ids, tokens, false)
	if err != nil {
		return nil, nil, err
	}
	lp, err := e.scoreTargets(targets)
	return next, lp, err
}

// scoreTargets returns log-softmax(logits row r)[targets[r]] for the rows of the last decode
// step's logits (still in e.logits).
func (e *engine) scoreTargets(targets []int) ([]float64, error) {
	B := len(targets)
	if B == 0 {
		return nil, nil
	}
	e.d.enter()
	defer e.d.exit()
	t32 := make([]int32, B)
	for i, t := range targets {
		t32[i] = int32(t)
	}
	tDev := e.score + uint64(e.opt.MaxBatch*8)
	if err := uploadSlice(e.d, tDev, t32); err != nil {
		return nil, err
	}
	if err := e.d.launch("logprob_rows", dim3{x: B}, dim3{x: 1024}, 0, new(args).p(e.logits).p(tDev).p(e.score).i(e.cfg.VocabSize)); err != nil {
		return nil, err
	}
	out := make([]float64, B)
	return out, downloadSlice(e.d, out, e.score)
}

// graphKey identifies a decode step's launch configuration: the batch size and the attention
// split count; everything else a step varies (tokens, positions, slots, lengths) is read from
// device memory, so a captured step can be replayed.
type graphKey struct{ B, S int }

// maxGraphs bounds the cached decode graphs (continuous batching sees many batch sizes).
const maxGraphs = 64

// runStep runs a decode step: from the second step of a configuration on, as a replay of a CUDA
// graph captured from it (one launch instead of ~10 per layer, and no gaps between kernels).
// The first step of a configuration runs directly, which also tunes its GEMMs outside capture.
// DMC_NO_GRAPHS=1 or profiling disables graphs; a failed capture disables them for the engine.
func (e *engine) runStep(k graphKey, enqueue func() error) error {
	if e.noGraphs || e.prof != nil {
		return enqueue()
	}
	if g, ok := e.graphs[k]; ok {
		return e.d.launchGraph(g)
	}
	if !e.seen[k] {
		e.seen[k] = true
		return enqueue()
	}
	if len(e.graphs) >= maxGraphs {
		for key, g := range e.graphs {
			g.destroy()
			delete(e.graphs, key)
		}
	}
	g, err := e.d.capture(enqueue)
	if err != nil {
		e.noGraphs = true
		return enqueue()
	}
	e.graphs[k] = g
	return e.d.launchGraph(g)
}

func (e *engine) Release(ids ...int) error {
	if len(ids) == 0 {
		return nil
	}
	e.d.enter()
	defer e.d.exit()
	for _, id := range ids {
		s, ok := e.seqs[id]
		if !ok {
			continue
		}
		if err := e.cache.freeSlot(s.slot); err != nil {
			return err
		}
		// The row's DMC state is left as is: an empty row always appends, which resets it.
		delete(e.seqs, id)
		e.freeSlots = append(e.freeSlots, s.slot)
	}
	return e.cache.clearStatus()
}

func (e *engine) CacheStats() (CacheStats, error) {
	e.d.enter()
	defer e.d.exit()
	st := CacheStats{Sequences: len(e.seqs), PagesTotal: e.cache.nPages, PageTokens: pageTokens}
	freeP, err := e.cache.freePages()
	if err != nil {
		return st, err
	}
	st.PagesUsed = e.cache.nPages - freeP
	pages := 0
	for _, s := range e.seqs {
		lens, err := e.cache.rowLens(s.slot)
		if err != nil {
			return st, err
		}
		for _, n := range lens {
			st.Slots += int64(n)
			pages += (int(n) + pageTokens - 1) / pageTokens
		}
		st.Tokens += int64(s.pos) * int64(len(lens))
	}
	st.Unallocated = st.PagesUsed - pages
	return st, nil
}

// RowSlots implements model.SlotCounter.
func (e *engine) RowSlots(id int) ([]int, error) {
	e.d.enter()
	defer e.d.exit()
	s := e.seqs[id]
	if s == nil {
		return nil, fmt.Errorf("row slots: no active sequence %d", id)
	}
	lens, err := e.cache.rowLens(s.slot)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(lens))
	for i, n := range lens {
		out[i] = int(n)
	}
	return out, nil
}

// CopyBandwidth measures device-to-device copy bandwidth in bytes per second, counting bytes
// read plus bytes written (the convention of the roofline figures), with a copy of n bytes
// repeated 10 times after 3 warm-up copies.
func CopyBandwidth(ordinal int, n int64) (float64, error) {
	d, err := getDevice(ordinal)
	if err != nil {
		return 0, err
	}
	d.enter()
	defer d.exit()
	a, err := d.alloc(n, "bandwidth test")
	if err != nil {
		return 0, err
	}
	defer d.free(a)
	b, err := d.alloc(n, "bandwidth test")
	if err != nil {
		return 0, err
	}
	defer d.free(b)
	if err := d.memset(a, 0x3c, n); err != nil {
		return 0, err
	}
	for i := 0; i < 3; i++ {
		if err := d.copyD(b, a, n); err != nil {
			return 0, err
		}
	}
	e0, err := d.newEvent()
	if err != nil {
		return 0, err
	}
	defer e0.destroy()
	e1, err := d.newEvent()
	if err != nil {
		return 0, err
	}
	defer e1.destroy()
	e0.record()
	const reps = 10
	for i := 0; i < reps; i++ {
		if err := d.copyD(b, a, n); err != nil {
			return 0, err
		}
	}
	e1.record()
	ms, err := elapsed(e0, e1)
	if err != nil {
		return 0, err
	}
	return 2 * float64(n) * reps / (ms / 1e3), nil
}
