//go:build dmc_cuda

package kernels

import (
	_ "embed"
	"fmt"
	"math"

	"github.com/dmc-project/dmc/model"
)

//go:embed ptx/dmc.ptx
var ptxImage string

// ptxImageSM90 is the same kernels built for compute_90, where each waits for the previous
// kernel with griddepcontrol.wait (programmatic dependent launch).
//
//go:embed ptx/dmc_sm90.ptx
var ptxImageSM90 string

// pageTokens is the KV page size in tokens (PAGE in csrc/dmc.cu).
const pageTokens = 16

// geometry is the attention shape of a model.
type geometry struct {
	L, Hq, Hkv, D, G, qd, kvd int
	interleaved               bool
}

func geometryOf(cfg model.Config) geometry {
	D := cfg.HeadDim()
	return geometry{L: cfg.NLayers, Hq: cfg.NHeads, Hkv: cfg.NKVHeads, D: D, G: cfg.GroupSize(),
		qd: cfg.NHeads * D, kvd: cfg.NKVHeads * D, interleaved: cfg.RoPE == model.RoPEInterleaved}
}

// kvCache is the paged KV pool with its block tables, per-row lengths, free-page stack and,
// in DMC mode, the per-row merge state. Rows are (slot, layer, KV head).
type kvCache struct {
	d                           *device
	g                           geometry
	dmc                         bool
	forceCR, window, channel    int
	decOffset, impOffset        float64
	maxBatch, maxPages, nPages  int
	maxContext                  int
	pageBytes                   int64
	stateStride                 int // floats per row
	pool, bt, lens, state, cs   devPtr
	freeList, freeTop, status   devPtr
	memPool, memState, memTable int64
	attnKernel                  string
}

func stateStrideOf(g geometry, window int) int { return 2*g.D + 2 + window*(2*g.D+1) }

// tableBytes is the block-table, length and DMC-state memory of one batch slot.
func tableBytes(g geometry, opt Options) (tables, state int64) {
	rows := int64(g.L * g.Hkv)
	maxPages := int64((opt.MaxContext + pageTokens - 1) / pageTokens)
	tables = rows * (maxPages + 1) * 4
	if opt.DMC != nil {
		state = rows * int64(stateStrideOf(g, opt.DMC.Window)) * 4
	}
	return
}

func pageBytesOf(g geometry) int64 { return int64(2 * pageTokens * g.D * 2) }

func newKVCache(d *device, cfg model.Config, opt Options, poolBytes int64) (*kvCache, error) {
	g := geometryOf(cfg)
	c := &kvCache{d: d, g: g, forceCR: opt.ForceCR,
		maxBatch: opt.MaxBatch, maxContext: opt.MaxContext, maxPages: (opt.MaxContext + pageTokens - 1) / pageTokens,
		pageBytes: pageBytesOf(g), stateStride: stateStrideOf(g, 0)}
	if dc := opt.DMC; dc != nil { // validate resolved the channel
		c.dmc, c.window, c.channel, c.decOffset, c.impOffset = true, dc.Window, dc.DecisionChannel, dc.DecisionOffset, dc.ImportanceOffset
		c.stateStride = stateStrideOf(g, dc.Window)
	}
	c.nPages = int(poolBytes / c.pageBytes)
	if c.nPages < 1 {
		return nil, fmt.Errorf("KV pool of %d bytes holds no page", poolBytes)
	}
	rows := int64(c.maxBatch * g.L * g.Hkv)
	var err error
	alloc := func(p *devPtr, n int64, what string) {
		if err == nil {
			*p, err = d.alloc(n, what)
		}
	}
	c.memPool = int64(c.nPages) * c.pageBytes
	alloc(&c.pool, c.memPool, "the KV page pool")
	c.memTable = rows*int64(c.maxPages)*4 + rows*4 + int64(c.nPages)*4
	alloc(&c.bt, rows*int64(c.maxPages)*4, "block tables")
	alloc(&c.lens, rows*4, "row lengths")
	alloc(&c.freeList, int64(c.nPages)*4, "the free-page list")
	alloc(&c.freeTop, 256, "pool counters")
	if c.dmc {
		c.memState = rows * int64(c.stateStride) * 4
		alloc(&c.state, c.memState, "DMC state")
	}
	// cos/sin of every (position, pair), computed in float64 like model.Rotate.
	rope := model.NewRoPE(cfg)
	cs := make([]float32, opt.MaxContext*g.D)
	for p := 0; p < opt.MaxContext; p++ {
		for i := 0; i < g.D/2; i++ {
			s, co := math.Sincos(rope.Angle(i, p))
			cs[(p*g.D/2+i)*2], cs[(p*g.D/2+i)*2+1] = float32(co), float32(s)
		}
	}
	alloc(&c.cs, int64(len(cs))*4, "RoPE tables")
	if err != nil {
		c.free()
		return nil, err
	}
	c.status = c.freeTop + 4
	if err := uploadSlice(d, c.cs, cs); err != nil {
		return nil, err
	}
	if err := c.reset(); err != nil {
		c.free()
		return nil, err
	}
	return c, nil
}

// reset empties every row and refills the free stack.
func (c *kvCache) reset() error {
	rows := int64(c.maxBatch * c.g.L * c.g.Hkv)
	if err := c.d.memset(c.lens, 0, rows*4); err != nil {
		return err
	}
	if err := c.d.memset(c.bt, 0xff, rows*int64(c.maxPages)*4); err != nil {
		return err
	}
	if c.dmc {
		if err := c.d.memset(c.state, 0, c.memState); err != nil {
			return err
		}
	}
	if err := c.d.memset(c.freeTop, 0, 256); err != nil {
		return err
	}
	return c.d.launch("pool_init", dim3{x: min(1024, (c.nPages+255)/256)}, dim3{x: 256}, 0,
		new(args).p(c.freeList).p(c.freeTop).i(c.nPages))
}

func (c *kvCache) free() {
	for _, p := range []devPtr{c.pool, c.bt, c.lens, c.freeList, c.freeTop, c.state, c.cs} {
		c.d.free(p)
	}
}

// freeSlot returns the pages of batch slot s to the pool.
func (c *kvCache) freeSlot(s int) error {
	rows := c.g.L * c.g.Hkv
	return c.d.launch("pool_free_slot", dim3{x: (rows + 127) / 128}, dim3{x: 128}, 0,
		new(args).p(c.bt).p(c.lens).p(c.freeList).p(c.freeTop).i(s).i(rows).i(c.maxPages))
}

// updateIO names the device arrays an update kernel reads and writes.
type updateIO struct {
	qkv                              devPtr
	qkvStride                        int
	slots, pos, tokStart, tokCount   devPtr
	qOut, qPre, kPre, vPre, alphaPre devPtr
	// prefill per-head arrays [Hkv][alphaStride]
	alphaStride               int
	omegaPre, slotPre, segPre devPtr
}

func (c *kvCache) updateArgs(layer int, io updateIO) *args {
	g := c.g
	dmc := 0
	if c.dmc {
		dmc = 1
	}
	il := 0
	if g.interleaved {
		il = 1
	}
	return new(args).p(io.qkv).i(io.qkvStride).p(io.slots).p(io.pos).p(io.tokStart).p(io.tokCount).
		p(c.pool).p(c.bt).p(c.lens).p(c.freeList).p(c.freeTop).p(c.status).p(c.state).p(c.cs).
		p(io.qOut).p(io.qPre).p(io.kPre).p(io.vPre).p(io.alphaPre).
		i(layer).i(g.L).i(g.Hq).i(g.Hkv).i(g.D).i(c.maxPages).i(c.window).i(c.channel).i(dmc).i(c.forceCR).i(il).
		f(float32(c.decOffset)).f(float32(c.impOffset)).i(io.alphaStride).p(io.omegaPre).p(io.slotPre).p(io.segPre).end()
}

func (c *kvCache) threads() int { return max(32, (c.g.D+31)/32*32) }

// decodeUpdate ingests one token for each of B sequences: qkv rows [B][qd+2kvd] fp32, writes
// the rotated queries to io.qOut.
func (c *kvCache) decodeUpdate(layer, B int, io updateIO) error {
	return c.d.launch("kv_update_decode", dim3{x: c.g.Hkv, y: B}, dim3{x: c.threads()}, 0, c.updateArgs(layer, io))
}

// prefillUpdate ingests all prompt tokens of nSeq new sequences (N rows in total, at most maxN
// per sequence). DMC with a window runs in parallel over the tokens (plan, states, commit);
// without a window (unbounded segments) one scan per (sequence, KV head) does the update.
func (c *kvCache) prefillUpdate(layer, nSeq, N, maxN int, io updateIO, tokSeq devPtr) error {
	if c.dmc && c.window == 0 {
		return c.d.launch("kv_update_prefill", dim3{x: c.g.Hkv, y: nSeq}, dim3{x: c.threads()}, 0, c.updateArgs(layer, io))
	}
	if c.dmc {
		a := c.updateArgs(layer, io)
		if err := c.d.launch("dmc_prefill_plan", dim3{x: c.g.Hkv, y: nSeq}, dim3{x: 1024}, 0, a); err != nil {
			return err
		}
		if err := c.d.launch("dmc_prefill_states", dim3{x: (maxN + 15) / 16, y: c.g.Hkv, z: nSeq}, dim3{x: c.threads()}, 0, a); err != nil {
			return err
		}
		return c.d.launch("dmc_prefill_commit", dim3{x: c.g.Hkv, y: nSeq}, dim3{x: 32}, 0, a)
	}
	a := c.updateArgs(layer, io)
	if err := c.d.launch("kv_alloc_prefill", dim3{x: c.g.Hkv, y: nSeq}, dim3{x: 32}, 0, a); err != nil {
		return err
	}
	if err := c.d.launch("kv_write_prefill", dim3{x: c.g.Hkv, y: N}, dim3{x: c.threads()}, 0,
		c.updateArgs(layer, io).p(tokSeq)); err != nil {
		return err
	}
	return c.d.launch("kv_commit_prefill", dim3{x: c.g.Hkv, y: nSeq}, dim3{x: 32}, 0, a)
}

// attnTargetBlocks is the number of attention blocks per launch to aim for: about 32 per SM
// (several waves of ~7 resident blocks), so that equal-length blocks do not leave the last
// wave mostly idle.
func attnTargetBlocks(sms int) int { return 32 * sms }

// splits picks the number of split-K chunks per (sequence, KV head): enough blocks for
// several full waves, and no chunk shorter than 128 slots.
func (c *kvCache) splits(B, maxLen int) int {
	target := attnTargetBlocks(c.d.sms)
	s := (target + B*c.g.Hkv - 1) / (B * c.g.Hkv)
	s = min(s, (maxLen+127)/128, 64) // the kernel gives each split at least 128 slots
	return max(s, 1)
}

// partFloats is the size of the split-K partial buffer for up to maxBatch sequences.
func partFloats(g geometry, maxBatch, sms int) int64 {
	return int64(maxBatch*g.Hkv+attnTargetBlocks(sms)) * int64(g.G*(g.D+2))
}

// decodeAttention attends the rotated queries q [B][qd] fp32 over each row's slots, writing
// outBf (bf16) or outF (fp32) [B][qd]. maxLen bounds the rows' lengths.
func (c *kvCache) decodeAttention(layer, B, maxLen int, q, slots, part, outBf, outF devPtr) error {
	g := c.g
	S := c.splits(B, maxLen)
	scale := float32(math.Log2E / math.Sqrt(float64(g.D)))
	a := new(args).p(q).p(c.pool).p(c.bt).p(c.lens).p(slots).p(part).
		i(layer).i(g.L).i(g.Hq).i(g.Hkv).i(c.maxPages).i(S).f(scale).end()
	if c.attnKernel == "" {
		c.attnKernel = fmt.Sprintf("attn_decode_d%d_g%d", g.D, g.G)
	}
	if err := c.d.launch(c.attnKernel, dim3{x: S, y: g.Hkv, z: B}, dim3{x: 128}, 0, a); err != nil {
		return err
	}
	return c.d.launch("attn_reduce", dim3{x: g.Hq, y: B}, dim3{x: g.D}, 0,
		new(args).p(part).p(outBf).p(outF).i(g.Hq).i(g.D).i(S))
}

// prefillSeq is one prompt inside a prefill chunk.
type prefillSeq struct{ start, count int }

// prefillScratch holds the score buffers and the pointer arrays of prompt attention.
type prefillScratch struct {
	sBuf, pBuf  devPtr // fp32 scores, bf16 probabilities of up to sElems elements
	sElems      int64
	ptrs        devPtr // device pointer arrays
	ptrCap      int    // entries
	qPre, kPre  devPtr
	vPre, alpha devPtr
	out         devPtr // bf16 [N][qd]
	// per-head [Hkv][stride] arrays of the parallel DMC prefill
	stride              int
	omega, slot, segBeg devPtr
}

func (sc *prefillScratch) io(qkv devPtr, qkvStride int, slots, pos, tokStart, tokCount devPtr) updateIO {
	return updateIO{qkv: qkv, qkvStride: qkvStride, slots: slots, pos: pos, tokStart: tokStart, tokCount: tokCount,
		qPre: sc.qPre, kPre: sc.kPre, vPre: sc.vPre, alphaPre: sc.alpha, alphaStride: sc.stride,
		omegaPre: sc.omega, slotPre: sc.slot, segPre: sc.segBeg}
}

// attnBudget bounds the prompt-attention score buffers (fp32 scores + bf16 probabilities).
const attnBudget = 1 << 30

func scoreElems(g geometry, maxContext int) int64 {
	t2 := int64(maxContext) * int64(maxContext)
	nh := min(int64(g.Hq), max(1, attnBudget/(6*t2)))
	return nh * t2
}

// prefillAttention computes masked attention of every prompt token over the partial states of
// its own prompt: per sequence and chunk of query heads, S = Q·K̃ᵀ (batched GEMM), the masked
// softmax, then O = P·Ṽ written into sc.out.
func (c *kvCache) prefillAttention(seqs []prefillSeq, sc *prefillScratch) error {
	g := c.g
	type call struct{ i0, nh, T, off, start int }
	var calls []call
	var host []uint64
	for _, s := range seqs {
		T := s.count
		perChunk := int(min(int64(g.Hq), max(1, sc.sElems/(int64(T)*int64(T)))))
		for i0 := 0; i0 < g.Hq; i0 += perChunk {
			nh := min(perChunk, g.Hq-i0)
			calls = append(calls, call{i0, nh, T, len(host), s.start})
			for k := 0; k < 6; k++ {
				for j := 0; j < nh; j++ {
					i := i0 + j
					h := i / g.G
					var p uint64
					switch k {
					case 0: // A of S: keys of KV head h
						p = sc.kPre + uint64((s.start*g.kvd+h*g.D)*2)
					case 1: // B of S: queries of head i
						p = sc.qPre + uint64((s.start*g.qd+i*g.D)*2)
					case 2: // C of S
						p = sc.sBuf + uint64(int64(j)*int64(T)*int64(T)*4)
					case 3: // A of O: values of KV head h
						p = sc.vPre + uint64((s.start*g.kvd+h*g.D)*2)
					case 4: // B of O: probabilities
						p = sc.pBuf + uint64(int64(j)*int64(T)*int64(T)*2)
					case 5: // C of O: attention output of head i
						p = sc.out + uint64((s.start*g.qd+i*g.D)*2)
					}
					host = append(host, p)
				}
			}
		}
	}
	if len(host) > sc.ptrCap {
		return fmt.Errorf("prefill: %d attention pointers exceed the scratch of %d", len(host), sc.ptrCap)
	}
	if err := uploadSlice(c.d, sc.ptrs, host); err != nil {
		return err
	}
	scale := float32(1 / math.Sqrt(float64(g.D)))
	dmc := 0
	if c.dmc {
		dmc = 1
	}
	for _, cl := range calls {
		arr := func(k int) devPtr { return sc.ptrs + uint64((cl.off+k*cl.nh)*8) }
		T := cl.T
		if err := c.d.gemmBatched(opT, opN, T, T, g.D, 1, arr(0), typeBF, g.kvd, arr(1), typeBF, g.qd, 0, arr(2), typeF32, T, cl.nh); err != nil {
			return err
		}
		if err := c.d.launch("prefill_softmax", dim3{x: T, y: cl.nh}, dim3{x: 256}, 0,
			new(args).p(sc.sBuf).p(sc.pBuf).p(sc.alpha+uint64(cl.start*4)).i(sc.stride).i(T).i(g.G).i(cl.i0).f(scale).i(dmc)); err != nil {
			return err
		}
		if err := c.d.gemmBatched(opN, opN, g.D, T, T, 1, arr(3), typeBF, g.kvd, arr(4), typeBF, T, 0, arr(5), typeBF, g.qd, cl.nh); err != nil {
			return err
		}
	}
	return nil
}

// statusFlags reads the kernels' error flags (bit 0: pool exhausted).
func (c *kvCache) statusFlags() (int32, error) {
	var s [2]int32
	if err := downloadSlice(c.d, s[:], c.freeTop); err != nil {
		return 0, err
	}
	return s[1], nil
}

func (c *kvCache) clearStatus() error { return c.d.memset(c.status, 0, 4) }

// freePages is the number of pages on the free stack.
func (c *kvCache) freePages() (int, error) {
	var s [2]int32
	if err := downloadSlice(c.d, s[:], c.freeTop); err != nil {
		return 0, err
	}
	return int(s[0]), nil
}

// rowLens downloads the lengths of the rows of batch slot s (L*Hkv values, layer-major).
func (c *kvCache) rowLens(s int) ([]int32, error) {
	n := c.g.L * c.g.Hkv
	out := make([]int32, n)
	err := downloadSlice(c.d, out, c.lens+uint64(s*n*4))
	return out, err
}
