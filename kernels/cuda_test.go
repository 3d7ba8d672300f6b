//go:build dmc_cuda

package kernels

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/kernels/kerneltest"
	"github.com/dmc-project/dmc/model"
)

// testDevice returns the GPU, skipping when there is none (unless DMC_REQUIRE_GPU is set, as
// on the GPU machine, where a missing device is a failure).
func testDevice(t testing.TB) *device {
	t.Helper()
	d, err := getDevice(0)
	if err != nil {
		if os.Getenv("DMC_REQUIRE_GPU") != "" {
			t.Fatal(err)
		}
		t.Skipf("no usable GPU: %v", err)
	}
	return d
}

// tmp allocates test device memory poisoned with 0xFF bytes (NaN in fp32 and bf16).
type tmp struct {
	d    *device
	ptrs []devPtr
}

func (m *tmp) alloc(t testing.TB, n int64) devPtr {
	p, err := m.d.alloc(n, "test buffer")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.d.memset(p, 0xff, n); err != nil {
		t.Fatal(err)
	}
	m.ptrs = append(m.ptrs, p)
	return p
}

func (m *tmp) release() {
	for _, p := range m.ptrs {
		m.d.free(p)
	}
}

func up[T any](t testing.TB, m *tmp, s []T) devPtr {
	var z T
	p := m.alloc(t, int64(len(s))*int64(sizeOf(z)))
	if err := uploadSlice(m.d, p, s); err != nil {
		t.Fatal(err)
	}
	return p
}

func sizeOf(v any) int {
	switch v.(type) {
	case float32, int32, uint32:
		return 4
	case uint16:
		return 2
	case uint64:
		return 8
	}
	panic("sizeOf")
}

func roundup32(n int) int { return max(32, (n+31)/32*32) }

// cudaBackend runs the engine's kernels on small host inputs for the conformance suite.
type cudaBackend struct {
	t testing.TB
	d *device
}

func (b cudaBackend) Name() string                    { return "cuda" }
func (b cudaBackend) Precision() kerneltest.Precision { return kerneltest.BF16 }

func (b cudaBackend) run(f func(m *tmp) error) error {
	b.d.enter()
	defer b.d.exit()
	m := &tmp{d: b.d}
	defer m.release()
	if err := f(m); err != nil {
		return err
	}
	return b.d.sync()
}

func (b cudaBackend) RMSNorm(out, x, w []float32, eps float64) error {
	return b.run(func(m *tmp) error {
		rows := len(x) / len(w)
		px, pw, po := up(b.t, m, x), up(b.t, m, w), m.alloc(b.t, int64(len(out))*4)
		if err := b.d.launch("rmsnorm_f32", dim3{x: rows}, dim3{x: min(1024, roundup32(len(w)))}, 0,
			new(args).p(px).p(pw).p(po).i(len(w)).f(float32(eps))); err != nil {
			return err
		}
		return downloadSlice(b.d, out, po)
	})
}

func ropeTable(h kerneltest.Heads, maxPos int) []float32 {
	r := model.NewRoPE(h.Config())
	cs := make([]float32, maxPos*h.HeadDim)
	for p := 0; p < maxPos; p++ {
		for i := 0; i < h.HeadDim/2; i++ {
			s, c := math.Sincos(r.Angle(i, p))
			cs[(p*h.HeadDim/2+i)*2], cs[(p*h.HeadDim/2+i)*2+1] = float32(c), float32(s)
		}
	}
	return cs
}

func (b cudaBackend) RoPE(h kerneltest.Heads, out, x []float32, pos []int) error {
	return b.run(func(m *tmp) error {
		maxPos := 0
		p32 := make([]int32, len(pos))
		for i, p := range pos {
			maxPos, p32[i] = max(maxPos, p+1), int32(p)
		}
		px, po, pp := up(b.t, m, x), m.alloc(b.t, int64(len(out))*4), up(b.t, m, p32)
		pcs := up(b.t, m, ropeTable(h, maxPos))
		il := 0
		if h.RoPE == model.RoPEInterleaved {
			il = 1
		}
		if err := b.d.launch("rope_f32", dim3{x: h.NHeads, y: len(pos)}, dim3{x: roundup32(h.HeadDim)}, 0,
			new(args).p(px).p(po).p(pp).p(pcs).i(h.NHeads).i(h.HeadDim).i(il)); err != nil {
			return err
		}
		return downloadSlice(b.d, out, po)
	})
}

func (b cudaBackend) SwiGLU(out, gate, upv []float32) error {
	return b.run(func(m *tmp) error {
		pg, pu, po := up(b.t, m, gate), up(b.t, m, upv), m.alloc(b.t, int64(len(out))*4)
		if err := b.d.launch("swiglu_f32", dim3{x: (len(out) + 255) / 256}, dim3{x: 256}, 0,
			new(args).p(pg).p(pu).p(po).i(len(out))); err != nil {
			return err
		}
		return downloadSlice(b.d, out, po)
	})
}

// testCache builds a one-layer engine cache for the problem's geometry.
func (b cudaBackend) testCache(h kerneltest.Heads, mode kerneltest.CacheMode, window, channel, forceCR, B, maxLen int) (*kvCache, error) {
	cfg := h.Config()
	opt := DefaultOptions()
	if mode == kerneltest.DMC {
		c := dmc.DefaultConfig()
		c.Window, c.DecisionChannel = window, channel
		opt.DMC = &c
	}
	opt.ForceCR = forceCR
	opt.MaxBatch, opt.MaxContext = B, maxLen+1
	opt, err := opt.validate(cfg)
	if err != nil {
		return nil, err
	}
	pages := B*h.NKVHeads*((maxLen+pageTokens-1)/pageTokens) + 3
	return newKVCache(b.d, cfg, opt, int64(pages)*pageBytesOf(geometryOf(cfg)))
}

func (b cudaBackend) Attention(p kerneltest.AttnProblem, out []float32) error {
	return b.run(func(m *tmp) error {
		maxLen := 1
		for _, k := range p.Keys {
			maxLen = max(maxLen, len(k)/p.HeadDim)
		}
		c, err := b.testCache(p.Heads, kerneltest.Vanilla, 0, 0, 0, p.B, maxLen)
		if err != nil {
			return err
		}
		defer c.free()
		// Lay the slots into pages by hand: row r gets pages in order.
		D := p.HeadDim
		pool := make([]uint16, c.nPages*2*pageTokens*D)
		bt := make([]int32, p.B*p.NKVHeads*c.maxPages)
		lens := make([]int32, p.B*p.NKVHeads)
		next := 0
		for r := range p.Keys {
			n := len(p.Keys[r]) / D
			lens[r] = int32(n)
			for j := 0; j < n; j++ {
				if j%pageTokens == 0 {
					bt[r*c.maxPages+j/pageTokens] = int32(next)
					next++
				}
				pg := int(bt[r*c.maxPages+j/pageTokens])
				for i := 0; i < D; i++ {
					pool[pg*2*pageTokens*D+(j%pageTokens)*D+i] = toBF16(p.Keys[r][j*D+i])
					pool[pg*2*pageTokens*D+pageTokens*D+(j%pageTokens)*D+i] = toBF16(p.Vals[r][j*D+i])
				}
			}
		}
		for _, e := range []error{uploadSlice(b.d, c.pool, pool), uploadSlice(b.d, c.bt, bt), uploadSlice(b.d, c.lens, lens)} {
			if e != nil {
				return e
			}
		}
		slots := make([]int32, p.B)
		for i := range slots {
			slots[i] = int32(i)
		}
		pq, ps, po := up(b.t, m, p.Q), up(b.t, m, slots), m.alloc(b.t, int64(len(out))*4)
		part := m.alloc(b.t, partFloats(c.g, p.B, b.d.sms)*4)
		if err := c.decodeAttention(0, p.B, maxLen, pq, ps, part, 0, po); err != nil {
			return err
		}
		return downloadSlice(b.d, out, po)
	})
}

func (b cudaBackend) Cache(p kerneltest.CacheProblem, res *kerneltest.CacheResult) error {
	return b.run(func(m *tmp) error {
		c, err := b.testCache(p.Heads, p.Mode, p.Window, p.Channel, p.ForceCR, p.B, p.T)
		if err != nil {
			return err
		}
		defer c.free()
		g := c.g
		stride := g.qd + 2*g.kvd
		// qkv rows as the QKV GEMM would produce them: row b*T+t.
		qkv := make([]float32, p.B*p.T*stride)
		for r := 0; r < p.B*p.T; r++ {
			copy(qkv[r*stride:], p.Q[r*g.qd:(r+1)*g.qd])
			copy(qkv[r*stride+g.qd:], p.K[r*g.kvd:(r+1)*g.kvd])
			copy(qkv[r*stride+g.qd+g.kvd:], p.V[r*g.kvd:(r+1)*g.kvd])
		}
		slots := make([]int32, p.B)
		for i := range slots {
			slots[i] = int32(i)
		}
		pslots := up(b.t, m, slots)
		if p.Prefill {
			N := p.B * p.T
			pos, start, count, tokSeq := make([]int32, p.B), make([]int32, p.B), make([]int32, p.B), make([]int32, N)
			var seqs []prefillSeq
			for i := 0; i < p.B; i++ {
				start[i], count[i] = int32(i*p.T), int32(p.T)
				seqs = append(seqs, prefillSeq{start: i * p.T, count: p.T})
				for t := 0; t < p.T; t++ {
					tokSeq[i*p.T+t] = int32(i)
				}
			}
			sc := prefillScratch{sElems: int64(p.T) * int64(p.T) * int64(g.Hq), ptrCap: 6 * g.Hq * p.B}
			sc.sBuf, sc.pBuf = m.alloc(b.t, sc.sElems*4), m.alloc(b.t, sc.sElems*2)
			sc.ptrs = m.alloc(b.t, int64(sc.ptrCap)*8)
			sc.qPre, sc.kPre, sc.vPre = m.alloc(b.t, int64(N*g.qd*2)), m.alloc(b.t, int64(N*g.kvd*2)), m.alloc(b.t, int64(N*g.kvd*2))
			sc.alpha, sc.out = m.alloc(b.t, int64(N*g.Hkv*4)), m.alloc(b.t, int64(N*g.qd*2))
			sc.stride = N
			sc.omega, sc.slot, sc.segBeg = m.alloc(b.t, int64(N*g.Hkv*4)), m.alloc(b.t, int64(N*g.Hkv*4)), m.alloc(b.t, int64(N*g.Hkv*4))
			io := sc.io(up(b.t, m, qkv), stride, pslots, up(b.t, m, pos), up(b.t, m, start), up(b.t, m, count))
			if err := c.prefillUpdate(0, p.B, N, p.T, io, up(b.t, m, tokSeq)); err != nil {
				return err
			}
			if err := c.prefillAttention(seqs, &sc); err != nil {
				return err
			}
			outF := m.alloc(b.t, int64(N*g.qd*4))
			if err := b.d.launch("bf16_to_f32", dim3{x: 64}, dim3{x: 256}, 0, new(args).p(sc.out).p(outF).i64(int64(N*g.qd))); err != nil {
				return err
			}
			if err := downloadSlice(b.d, res.Out, outF); err != nil {
				return err
			}
		} else {
			pqkv := m.alloc(b.t, int64(p.B*stride*4))
			ppos := m.alloc(b.t, int64(p.B*4))
			q, o := m.alloc(b.t, int64(p.B*g.qd*4)), m.alloc(b.t, int64(p.B*g.qd*4))
			part := m.alloc(b.t, partFloats(g, p.B, b.d.sms)*4)
			step := make([]float32, p.B*stride)
			pos := make([]int32, p.B)
			out := make([]float32, p.B*g.qd)
			for t := 0; t < p.T; t++ {
				for i := 0; i < p.B; i++ {
					copy(step[i*stride:(i+1)*stride], qkv[(i*p.T+t)*stride:])
					pos[i] = int32(t)
				}
				if err := uploadSlice(b.d, pqkv, step); err != nil {
					return err
				}
				if err := uploadSlice(b.d, ppos, pos); err != nil {
					return err
				}
				io := updateIO{qkv: pqkv, qkvStride: stride, slots: pslots, pos: ppos, qOut: q}
				if err := c.decodeUpdate(0, p.B, io); err != nil {
					return err
				}
				if err := b.d.memset(o, 0xff, int64(len(out)*4)); err != nil {
					return err
				}
				if err := c.decodeAttention(0, p.B, t+1, q, pslots, part, 0, o); err != nil {
					return err
				}
				if err := downloadSlice(b.d, out, o); err != nil {
					return err
				}
				for i := 0; i < p.B; i++ {
					copy(res.Out[(i*p.T+t)*g.qd:], out[i*g.qd:(i+1)*g.qd])
				}
			}
		}
		if s, err := c.statusFlags(); err != nil || s != 0 {
			return errors.Join(err, errPoolExhausted)
		}
		// Read the slots back.
		rows := p.B * g.Hkv
		keys, vals := m.alloc(b.t, int64(rows*p.T*g.D*4)), m.alloc(b.t, int64(rows*p.T*g.D*4))
		if err := b.d.launch("kv_gather", dim3{x: p.T, y: rows}, dim3{x: roundup32(g.D)}, 0,
			new(args).p(c.pool).p(c.bt).p(c.lens).p(keys).p(vals).i(c.maxPages).i(p.T).i(g.D)); err != nil {
			return err
		}
		lens := make([]int32, rows)
		hk, hv := make([]float32, rows*p.T*g.D), make([]float32, rows*p.T*g.D)
		for _, e := range []error{downloadSlice(b.d, lens, c.lens), downloadSlice(b.d, hk, keys), downloadSlice(b.d, hv, vals)} {
			if e != nil {
				return e
			}
		}
		for r := 0; r < rows; r++ {
			n := int(lens[r])
			res.Keys = append(res.Keys, hk[r*p.T*g.D:(r*p.T+n)*g.D])
			res.Vals = append(res.Vals, hv[r*p.T*g.D:(r*p.T+n)*g.D])
		}
		free, err := c.freePages()
		if err != nil {
			return err
		}
		used := 0
		for _, n := range lens {
			used += (int(n) + pageTokens - 1) / pageTokens
		}
		if free+used != c.nPages {
			b.t.Errorf("page accounting: %d free + %d used != %d pages", free, used, c.nPages)
		}
		return nil
	})
}

func TestCUDAConformance(t *testing.T) {
	d := testDevice(t)
	kerneltest.Run(t, cudaBackend{t: t, d: d})
}

// assetPath finds a shared test asset ($DMC_ASSETS, else ../shared/assets from the repo root).
func assetPath(t testing.TB, rel string) string {
	t.Helper()
	dirs := []string{os.Getenv("DMC_ASSETS"), "../../shared/assets"}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skipf("test asset %s not found (set DMC_ASSETS or provide ../shared/assets)", rel)
	return ""
}

func loadStories(t testing.TB) *model.Weights {
	w, _, err := checkpoints.Load(assetPath(t, "tinyllamas-stories260K/stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// cpuGreedy runs model.Forward with cache from prompt for steps greedy tokens, and returns with
// each token the relative gap between the top two logits it was chosen from.
func cpuGreedy(t testing.TB, w *model.Weights, cache model.KVCache[float32], prompt []int, steps int) ([]int, []float64) {
	m := model.New(w)
	logits, err := m.Forward(cache, prompt, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	var gaps []float64
	pos := len(prompt)
	for i := 0; i < steps; i++ {
		next := argmax(logits)
		second := math.Inf(-1)
		for j, v := range logits {
			if j != next {
				second = max(second, float64(v))
			}
		}
		out = append(out, next)
		gaps = append(gaps, (float64(logits[next])-second)/math.Abs(float64(logits[next])))
		if logits, err = m.Forward(cache, []int{next}, pos, false); err != nil {
			t.Fatal(err)
		}
		pos++
	}
	return out, gaps
}

// tieGap is the relative top-2 logit gap below which bf16 rounding may legitimately pick the
// runner-up: the GPU's logits differ from the fp32 CPU's by about 1%.
const tieGap = 0.01

func argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

func gpuGreedy(t testing.TB, e Engine, prompt []int, steps int) []int {
	ids, next, _, err := e.Prefill([][]int{prompt}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release(ids...)
	out := []int{next[0]}
	for len(out) < steps {
		n, _, err := e.Decode(ids, []int{out[len(out)-1]}, false)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, n[0])
	}
	return out
}

func firstMismatch(a, b []int) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// Greedy decoding on the GPU must give the CPU reference's tokens: vanilla and DMC with a
// forced merge pattern for 100 steps on the real fp32 weights. A divergence is accepted only at
// a step where the CPU's own top-2 logits are within tieGap (a bf16 near-tie), and logged.
//
// With the model's own decisions (stories260K was never retrofitted, so its decision logits
// hover around the threshold) greedy decoding is chaotic at bf16 precision: rounding only the
// weights to bf16 already moves the CPU's own tokens after ~34 steps. So that case compares
// against the CPU on the engine's bf16-valued weights and requires identical tokens up to the
// first position where some decision logit came within 0.25 of the threshold (bf16 rounding
// of k can flip it there); beyond it the divergence is logged, not failed.
// engineAndReference loads w on the GPU with opt and returns the weights the CPU reference
// must run: the engine's own bf16 copy for learned DMC decisions (which flip on rounding),
// else w.
func engineAndReference(t *testing.T, w *model.Weights, opt Options) (Engine, *model.Weights) {
	t.Helper()
	e, err := NewEngine(w, opt)
	if err != nil {
		t.Fatal(err)
	}
	if opt.DMC == nil || opt.ForceCR > 0 {
		return e, w
	}
	ref, err := e.(*engine).downloadWeights()
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	return e, ref
}

func TestStories260KGreedyParity(t *testing.T) {
	testDevice(t)
	w := loadStories(t)
	const steps = 100
	for _, c := range []struct {
		name    string
		dmc     bool
		forceCR int
		prompt  []int
	}{{"vanilla-bos", false, 0, []int{1}}, {"vanilla-prompt", false, 0, []int{1, 403, 407, 261, 378, 394, 261, 280, 429}},
		{"dmc-forced3", true, 3, []int{1, 403, 407, 261, 378, 394, 261, 280}}, {"dmc-forced2", true, 2, []int{1}},
		{"dmc-learned", true, 0, []int{1, 403, 407, 261, 378}}} {
		t.Run(c.name, func(t *testing.T) {
			opt := DefaultOptions()
			opt.DMC, opt.ForceCR, opt.MaxBatch = defaultDMCIf(c.dmc), c.forceCR, 4
			e, ref := engineAndReference(t, w, opt)
			defer e.Close()
			var cache model.KVCache[float32] = model.NewVanillaCache[float32](w.Config)
			var cc *dmc.CompressedCache[float32]
			var err error
			if c.dmc {
				opts := []dmc.CacheOption{dmc.WithDecisionRecord()}
				if c.forceCR > 0 {
					cr := float64(c.forceCR)
					opts = append(opts, dmc.WithForcedDecisions(dmc.ForcedCR(func(int, int) float64 { return cr })))
				}
				if cc, err = dmc.NewCompressedCache[float32](w.Config, dmc.DefaultConfig(), opts...); err != nil {
					t.Fatal(err)
				}
				cache = cc
			}
			want, gaps := cpuGreedy(t, ref, cache, c.prompt, steps)
			got := gpuGreedy(t, e, c.prompt, steps)
			i := firstMismatch(got, want)
			if i >= 0 && gaps[i] < tieGap && !(c.dmc && c.forceCR == 0) {
				t.Logf("%s: identical for %d steps, then a near-tie (CPU top-2 gap %.2g%%) resolved differently", c.name, i, 100*gaps[i])
				return
			}
			if c.dmc && c.forceCR == 0 {
				near := math.MaxInt
				for l := 0; l < w.Config.NLayers; l++ {
					for h := 0; h < w.Config.NKVHeads; h++ {
						for _, d := range cc.Decisions(l, h) {
							if math.Abs(d.Logit) < 0.25 {
								near = min(near, d.Pos)
							}
						}
					}
				}
				t.Logf("CPU compression %.2f; first decision within 0.25 of the threshold at position %d", cc.CR(), near)
				if i >= 0 && len(c.prompt)-1+i < near {
					t.Fatalf("GPU greedy tokens diverge at step %d (position %d), before any near-threshold decision\n gpu %v\n cpu %v",
						i, len(c.prompt)-1+i, got, want)
				}
				if i >= 0 {
					t.Logf("identical for %d steps; diverges at position %d, after a near-threshold decision at %d", i, len(c.prompt)-1+i, near)
				} else {
					t.Logf("%d greedy tokens identical", steps)
				}
				return
			}
			if i >= 0 {
				t.Fatalf("GPU greedy tokens diverge from the CPU at step %d (CPU top-2 gap %.2g%%)\n gpu %v\n cpu %v", i, 100*gaps[i], got, want)
			}
			t.Logf("%s: %d greedy tokens identical to model.Forward", c.name, steps)
		})
	}
}

// Sequences that join and leave between steps must decode exactly as when run alone, and all
// pages must return to the pool.
func TestContinuousBatching(t *testing.T) {
	testDevice(t)
	w := loadStories(t)
	prompts := [][]int{{1, 403, 407}, {1, 261, 378, 394, 261, 280, 429, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309}, {1}, {1, 500, 20, 30}}
	for _, forceCR := range []int{0, 2} {
		opt := DefaultOptions()
		opt.DMC, opt.ForceCR, opt.MaxBatch = defaultDMCIf(forceCR > 0), forceCR, 3
		e, err := NewEngine(w, opt)
		if err != nil {
			t.Fatal(err)
		}
		const steps = 60
		var solo [][]int
		for _, p := range prompts {
			solo = append(solo, gpuGreedy(t, e, p, steps))
		}
		// Schedule: 0 and 1 start; 2 joins at step 10; 0 leaves when done; 3 joins when a slot frees.
		type run struct {
			idx, id int
			toks    []int
		}
		var active []*run
		start := func(idxs ...int) {
			var ps [][]int
			for _, i := range idxs {
				ps = append(ps, prompts[i])
			}
			ids, next, _, err := e.Prefill(ps, false)
			if err != nil {
				t.Fatal(err)
			}
			for k, i := range idxs {
				active = append(active, &run{idx: i, id: ids[k], toks: []int{next[k]}})
			}
		}
		start(0, 1)
		started3 := false
		done := map[int][]int{}
		for step := 0; len(done) < len(prompts); step++ {
			if step == 10 {
				start(2)
			}
			var keep []*run
			for _, r := range active {
				if len(r.toks) >= steps || (r.idx == 0 && len(r.toks) >= 30) {
					done[r.idx] = r.toks
					if err := e.Release(r.id); err != nil {
						t.Fatal(err)
					}
				} else {
					keep = append(keep, r)
				}
			}
			active = keep
			if !started3 && len(active) < 3 && step > 10 {
				start(3)
				started3 = true
			}
			if len(active) == 0 {
				continue
			}
			var ids, toks []int
			for _, r := range active {
				ids, toks = append(ids, r.id), append(toks, r.toks[len(r.toks)-1])
			}
			next, _, err := e.Decode(ids, toks, false)
			if err != nil {
				t.Fatal(err)
			}
			for k, r := range active {
				r.toks = append(r.toks, next[k])
			}
		}
		for i, toks := range done {
			want := solo[i][:len(toks)]
			if j := firstMismatch(toks, want); j >= 0 {
				t.Errorf("forceCR %d: sequence %d diverges from its solo run at step %d", forceCR, i, j)
			}
		}
		st, err := e.CacheStats()
		if err != nil {
			t.Fatal(err)
		}
		if st.PagesUsed != 0 || st.Sequences != 0 {
			t.Errorf("forceCR %d: after releasing everything %d pages and %d sequences remain", forceCR, st.PagesUsed, st.Sequences)
		}
		e.Close()
	}
}

// Logits of a 1B-class GQA model (tiny-1b-gqa, random weights drawn on the GPU) must match the
// CPU reference on the very same (bf16-valued) weights within bf16 tolerance, at prefill and
// over decode steps, vanilla and DMC (forced CR 2). The CPU keeps activations in fp32, the GPU
// rounds GEMM inputs to bf16, so a whole-model tolerance of 2e-2 applies.
func TestRandomGQALogits(t *testing.T) {
	testDevice(t)
	if testing.Short() {
		t.Skip("downloads a 1B model to the CPU")
	}
	cfg, err := model.Preset("tiny-1b-gqa")
	if err != nil {
		t.Fatal(err)
	}
	for _, forceCR := range []int{0, 2} {
		opt := DefaultOptions()
		opt.DMC, opt.ForceCR, opt.MaxContext = defaultDMCIf(forceCR > 0), forceCR, 256
		e, err := NewRandomEngine(cfg, 7, opt)
		if err != nil {
			t.Fatal(err)
		}
		w, err := e.(*engine).downloadWeights()
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		prompt := make([]int, 23)
		for i := range prompt {
			prompt[i] = rng.IntN(cfg.VocabSize)
		}
		var cache model.KVCache[float32] = model.NewVanillaCache[float32](cfg)
		if forceCR > 0 {
			cr := float64(forceCR)
			cache, err = dmc.NewCompressedCache[float32](cfg, dmc.DefaultConfig(),
				dmc.WithForcedDecisions(dmc.ForcedCR(func(int, int) float64 { return cr })))
			if err != nil {
				t.Fatal(err)
			}
		}
		m := model.New(w)
		want, err := m.Forward(cache, prompt, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		ids, _, got, err := e.Prefill([][]int{prompt}, true)
		if err != nil {
			t.Fatal(err)
		}
		worst, topAgree := 0.0, 0
		pos := len(prompt)
		for step := 0; ; step++ {
			errRel := kerneltest.RelErr(got[0], toF64(want))
			worst = max(worst, errRel)
			// bf16 activations (GEMM inputs) through 22 layers: about 1.3% is expected; the
			// per-kernel bound of the conformance suite is 1e-2.
			if errRel > 2e-2 {
				t.Errorf("forceCR %d step %d: logits relative error %.3g > 2e-2", forceCR, step, errRel)
			}
			if a, b := argmax(got[0]), argmax(want); a != b {
				topAgree++
				t.Logf("forceCR %d step %d: top-1 differs (GPU %d, CPU %d)", forceCR, step, a, b)
			}
			if step == 8 {
				break
			}
			tok := argmax(want)
			if want, err = m.Forward(cache, []int{tok}, pos, false); err != nil {
				t.Fatal(err)
			}
			pos++
			if _, got, err = e.Decode(ids, []int{tok}, true); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("tiny-1b-gqa forceCR %d: worst logits relative error over prefill + 8 steps %.3g; top-1 differs at %d of 9 steps",
			forceCR, worst, topAgree)
		e.Close()
	}
}

func toF64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// A pool too small for the sequences must give a clear error, not corrupt memory.
func TestPoolExhaustion(t *testing.T) {
	testDevice(t)
	w := loadStories(t)
	opt := DefaultOptions()
	opt.MaxBatch = 2
	opt.KVPoolBytes = int64(w.Config.NLayers*w.Config.NKVHeads*2) * pageBytesOf(geometryOf(w.Config)) // 2 pages per row
	e, err := NewEngine(w, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ids, next, _, err := e.Prefill([][]int{{1, 2, 3}}, false)
	if err != nil {
		t.Fatal(err)
	}
	tok := next[0]
	for i := 0; i < 40; i++ {
		n, _, err := e.Decode(ids, []int{tok}, false)
		if err != nil {
			if !errors.Is(err, errPoolExhausted) {
				t.Fatalf("want pool exhaustion, got %v", err)
			}
			t.Logf("step %d: %v", i, err)
			return
		}
		tok = n[0]
	}
	t.Fatal("decoding 43 tokens into 32 slots per row did not report exhaustion")
}

// defaultDMCIf is the reference DMC config when on, else nil (the vanilla cache).
func defaultDMCIf(on bool) *dmc.Config {
	if !on {
		return nil
	}
	c := dmc.DefaultConfig()
	return &c
}

// Perplexity through the engine (eval.PerplexityOn: sequences decoded in lockstep) agrees with
// the CPU reference on the same tokens: the NLL within bf16 error, the slot counts exactly
// with forced merges, and within a few percent with learned decisions (bf16 logits near the
// threshold may decide differently).
func TestEnginePerplexityMatchesCPU(t *testing.T) {
	testDevice(t)
	w := loadStories(t)
	rng := rand.New(rand.NewPCG(5, 6))
	var docs [][]int32
	for range 12 {
		d := make([]int32, 40+rng.IntN(260))
		d[0] = 1
		for i := 1; i < len(d); i++ {
			d[i] = int32(3 + rng.IntN(w.Config.VocabSize-3))
		}
		docs = append(docs, d)
	}
	seqOf := func(yield func([]int32, error) bool) {
		for _, d := range docs {
			if !yield(d, nil) {
				return
			}
		}
	}
	for _, c := range []struct {
		name    string
		dmc     bool
		forceCR int
	}{{"vanilla", false, 0}, {"dmc-forced3", true, 3}, {"dmc-learned", true, 0}} {
		t.Run(c.name, func(t *testing.T) {
			opt := DefaultOptions()
			opt.DMC, opt.ForceCR, opt.MaxBatch, opt.MaxContext = defaultDMCIf(c.dmc), c.forceCR, 5, 128
			e, ref := engineAndReference(t, w, opt)
			defer e.Close()
			factory := eval.VanillaCaches(w.Config)
			if c.dmc {
				var opts []dmc.CacheOption
				if c.forceCR > 0 {
					cr := float64(c.forceCR)
					opts = append(opts, dmc.WithForcedDecisions(dmc.ForcedCR(func(int, int) float64 { return cr })))
				}
				factory = func() (model.KVCache[float32], error) {
					return dmc.NewCompressedCache[float32](w.Config, dmc.DefaultConfig(), opts...)
				}
			}
			po := eval.PPLOptions{SeqLen: 128}
			want, err := eval.Perplexity(context.Background(), ref, factory, seqOf, po)
			if err != nil {
				t.Fatal(err)
			}
			got, err := eval.PerplexityOn(context.Background(), e, w.Config, seqOf, po, 5)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: GPU ppl %.4f CR %.3f, CPU ppl %.4f CR %.3f (%d tokens)", c.name, got.PPL, got.CR, want.PPL, want.CR, got.Tokens)
			if got.Tokens != want.Tokens || math.Abs(got.NLL-want.NLL) > 0.01*want.NLL {
				t.Errorf("NLL %g over %d tokens, CPU %g over %d", got.NLL, got.Tokens, want.NLL, want.Tokens)
			}
			tol := 0.0
			if c.dmc && c.forceCR == 0 {
				tol = 0.03
			}
			if math.Abs(got.CR-want.CR) > tol*want.CR {
				t.Errorf("real CR %g, CPU %g", got.CR, want.CR)
			}
			if st, _ := e.CacheStats(); st.Sequences != 0 || st.PagesUsed != 0 {
				t.Errorf("left %d sequences, %d pages in use", st.Sequences, st.PagesUsed)
			}
		})
	}
}

// The GPU's log-softmax at a target (logprob_rows) equals the host's from the same logits.
func TestDecodeScoreMatchesLogits(t *testing.T) {
	testDevice(t)
	w := loadStories(t)
	opt := DefaultOptions()
	opt.MaxBatch = 3
	e, err := NewEngine(w, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ids, next, _, err := e.Prefill([][]int{{1, 403, 407}, {1, 261}, {1}}, false)
	if err != nil {
		t.Fatal(err)
	}
	_, logits, err := e.Decode(ids, next, true)
	if err != nil {
		t.Fatal(err)
	}
	targets := []int{5, 300, w.Config.VocabSize - 1}
	got, err := e.(*engine).scoreTargets(targets)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range logits {
		if want := model.LogSoftmaxAt(l, targets[i]); math.Abs(got[i]-want) > 1e-9*math.Max(1, math.Abs(want)) {
			t.Errorf("row %d: GPU log p %.12g, host %.12g", i, got[i], want)
		}
	}
	if _, _, err := e.DecodeScore(ids, next, []int{1, 2}); err == nil {
		t.Error("DecodeScore with fewer targets than sequences: no error")
	}
	if _, _, err := e.DecodeScore(ids, next, []int{1, 2, w.Config.VocabSize}); err == nil {
		t.Error("DecodeScore with a target outside the vocabulary: no error")
	}
}

// gemv_swiglu_bf16 (the gate/up GEMV with SwiGLU that decode may use) against a float64
// reference on the same bf16 operands: rows 1–4, widths with and without the unrolled part's
// tail, bf16 output into NaN-poisoned memory. Tolerance: fp32 sums, and the bf16 rounding of h.
func TestGEMVSwiGLUMatchesReference(t *testing.T) {
	d := testDevice(t)
	rng := rand.New(rand.NewPCG(9, 10))
	b := cudaBackend{t: t, d: d}
	for _, rows := range []int{1, 2, 4} {
		for _, in := range []int{8, 264, 1032, 4096} {
			for _, hd := range []int{1, 33, 300} {
				w, x := make([]uint16, 2*hd*in), make([]uint16, rows*in)
				for i := range w {
					w[i] = toBF16(float32(rng.NormFloat64() * 0.05))
				}
				for i := range x {
					x[i] = toBF16(float32(rng.NormFloat64()))
				}
				want, tol := make([]float64, rows*hd), make([]float64, rows*hd)
				for r := 0; r < rows; r++ {
					for o := 0; o < hd; o++ {
						var g, u, ag, au float64
						for i := 0; i < in; i++ {
							xi := float64(fromBF16(x[r*in+i]))
							pg, pu := float64(fromBF16(w[o*in+i]))*xi, float64(fromBF16(w[(hd+o)*in+i]))*xi
							g, u, ag, au = g+pg, u+pu, ag+math.Abs(pg), au+math.Abs(pu)
						}
						sig := 1 / (1 + math.Exp(-g))
						k := r*hd + o
						want[k] = g * sig * u
						// |d silu/dg| ≤ 1.1; fp32 sums err ≤ 1e-5·Σ|terms|; bf16 output ≤ 2⁻⁸ relative.
						tol[k] = 1.1*math.Abs(u)*ag*1e-5 + math.Abs(g*sig)*au*1e-5 + math.Abs(want[k])/128 + 1e-6
					}
				}
				got := make([]float64, rows*hd)
				err := b.run(func(m *tmp) error {
					pw, px := up(t, m, w), up(t, m, x)
					py := m.alloc(t, int64(rows*hd)*2) // poisoned: NaN until written
					if err := d.gemvSwiGLU(py, px, pw, rows, in, hd); err != nil {
						return err
					}
					if err := d.sync(); err != nil {
						return err
					}
					yb := make([]uint16, rows*hd)
					if err := downloadSlice(d, yb, py); err != nil {
						return err
					}
					for i, v := range yb {
						got[i] = float64(fromBF16(v))
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				for i := range got {
					if e := math.Abs(got[i] - want[i]); !(e <= tol[i]) {
						t.Fatalf("rows %d in %d hd %d: h[%d] = %v, want %v ± %.2g", rows, in, hd, i, got[i], want[i], tol[i])
					}
				}
			}
		}
	}
}

// gemv_bf16 (the small-batch GEMV the tuner may pick for decode) against a float64 reference
// on the same bf16 operands: rows 1–4, widths with and without the unrolled part's tail,
// fp32 and bf16 outputs, overwrite (into NaN-poisoned memory) and accumulate.
func TestGEMVMatchesReference(t *testing.T) {
	d := testDevice(t)
	rng := rand.New(rand.NewPCG(7, 8))
	b := cudaBackend{t: t, d: d}
	for _, rows := range []int{1, 2, 3, 4} {
		for _, in := range []int{8, 256, 1024 + 8, 4096} {
			for _, out := range []int{1, 33, 300} {
				for _, yType := range []int{typeF32, typeBF} {
					for _, acc := range []bool{false, true} {
						w, x := make([]uint16, out*in), make([]uint16, rows*in)
						for i := range w {
							w[i] = toBF16(float32(rng.NormFloat64() * 0.05))
						}
						for i := range x {
							x[i] = toBF16(float32(rng.NormFloat64()))
						}
						y0 := make([]float32, rows*out)
						for i := range y0 {
							y0[i] = float32(rng.NormFloat64())
						}
						want := make([]float64, rows*out)
						for r := 0; r < rows; r++ {
							for o := 0; o < out; o++ {
								var s float64
								for i := 0; i < in; i++ {
									s += float64(fromBF16(w[o*in+i])) * float64(fromBF16(x[r*in+i]))
								}
								if acc {
									s += float64(y0[r*out+o])
									if yType == typeBF {
										s += float64(fromBF16(toBF16(y0[r*out+o]))) - float64(y0[r*out+o])
									}
								}
								want[r*out+o] = s
							}
						}
						got := make([]float64, rows*out)
						err := b.run(func(m *tmp) error {
							pw, px := up(t, m, w), up(t, m, x)
							var py devPtr
							switch {
							case yType == typeBF && acc:
								yb := make([]uint16, len(y0))
								for i, v := range y0 {
									yb[i] = toBF16(v)
								}
								py = up(t, m, yb)
							case yType == typeBF:
								py = m.alloc(t, int64(len(y0))*2)
							case acc:
								py = up(t, m, y0)
							default:
								py = m.alloc(t, int64(len(y0))*4)
							}
							if err := d.gemv(py, yType, px, pw, rows, in, out, acc); err != nil {
								return err
							}
							if err := d.sync(); err != nil {
								return err
							}
							if yType == typeBF {
								yb := make([]uint16, len(y0))
								if err := downloadSlice(d, yb, py); err != nil {
									return err
								}
								for i, v := range yb {
									got[i] = float64(fromBF16(v))
								}
								return nil
							}
							yf := make([]float32, len(y0))
							if err := downloadSlice(d, yf, py); err != nil {
								return err
							}
							for i, v := range yf {
								got[i] = float64(v)
							}
							return nil
						})
						if err != nil {
							t.Fatal(err)
						}
						tol := 1e-4
						if yType == typeBF {
							tol = 1.0 / 128
						}
						for i := range got {
							if e := math.Abs(got[i] - want[i]); !(e <= tol*(1+math.Abs(want[i]))) {
								t.Fatalf("rows %d in %d out %d yType %d acc %v: y[%d] = %v, want %v", rows, in, out, yType, acc, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	}
}
