//go:build dmc_cuda

package kernels

import (
	"errors"
	"fmt"
	"math"

	"github.com/dmc-project/dmc/model"
)

// The device ops of the training executor. Each mirrors one fused op (or its backward) of
// graph/ops on fp32 row-major buffers; shapes are passed explicitly and checked against the
// buffers' lengths. Outputs are fully overwritten unless an accumulate flag says otherwise
// (parameter gradients accumulate over micro-batches).

// ---- GEMMs (bf16 operands, fp32 accumulation and output)

// CastBF16 writes bf16(src) (round to nearest even) into dst.
func (t *TrainDevice) CastBF16(dst, src *DevBuf) error {
	if err := needAll("CastBF16", func() error { return need("", "dst", dst, BF16, src.n) }, func() error { return need("", "src", src, F32, 0) }); err != nil {
		return err
	}
	return t.launch1D("tr_cast_bf16", int64(src.n), new(args).p(dst.ptr).p(src.ptr).i64(int64(src.n)))
}

func ifElse(c bool, a, b int) int {
	if c {
		return a
	}
	return b
}

func betaOf(accumulate bool) float32 {
	if accumulate {
		return 1
	}
	return 0
}

// LinearForward is y[rows,out] (+)= x[rows,in]·W[out,in]ᵀ (graph/ops Linear), x and W bf16 (or
// both fp32: an fp32 GEMM, for exact comparisons; likewise the backward GEMMs).
func (t *TrainDevice) LinearForward(y, x16, w16 *DevBuf, rows, in, out int, accumulate bool) error {
	return t.Gemm(true, false, out, rows, in, 1, w16, in, x16, in, betaOf(accumulate), y, out)
}

// LinearBackwardX is dx[rows,in] (+)= dy[rows,out]·W[out,in], dy and W bf16.
func (t *TrainDevice) LinearBackwardX(dx, dy16, w16 *DevBuf, rows, in, out int, accumulate bool) error {
	return t.Gemm(false, false, in, rows, out, 1, w16, in, dy16, out, betaOf(accumulate), dx, in)
}

// LinearBackwardW is dW[out,in] (+)= dy[rows,out]ᵀ·x[rows,in], dy and x bf16 (accumulate: beta = 1,
// gradient accumulation into the fp32 gradient).
func (t *TrainDevice) LinearBackwardW(dw, dy16, x16 *DevBuf, rows, in, out int, accumulate bool) error {
	return t.Gemm(false, true, in, out, rows, 1, x16, in, dy16, out, betaOf(accumulate), dw, in)
}

// ---- RMSNorm

// RMSNormForward is y = x/rms(x)·w over rows of d; y16, when not nil, also gets bf16(y). y may
// be nil when y16 is not (a GEMM operand whose fp32 value nothing reads).
func (t *TrainDevice) RMSNormForward(y, y16, x, w *DevBuf, rows, d int, eps float64) error {
	if err := needAll("RMSNorm", func() error { return needOut("y", y, y16, rows*d) }, func() error { return need("", "x", x, F32, rows*d) },
		func() error { return need("", "w", w, F32, d) }, func() error { return needOpt("y16", y16, rows*d) }); err != nil {
		return err
	}
	return t.launch("tr_rmsnorm_fwd", dim3{x: rows}, rowBlock(d), 0, new(args).pOpt(y).pOpt(y16).p(x.ptr).p(w.ptr).i(rows).i(d).f(float32(eps)))
}

// needOut checks an fp32 output that may be nil where its bf16 copy out16 is written instead.
func needOut(name string, out, out16 *DevBuf, n int) error {
	if out == nil && out16 != nil {
		return nil
	}
	return need("", name, out, F32, n)
}

// RMSNormBackward writes dx = r·(w⊙dy) − x·r³/d·Σ(w⊙dy⊙x) and, when dw is not nil,
// dw (+)= Σ_rows dy⊙x·r (two passes, fixed order). dx may be nil when only dw is wanted.
// RMSNormBackwardX writes dx alone (add: adds it into dx's contents, a folded gradient sum)
// and, when dx16 is not nil, bf16 of the result into dx16.
func (t *TrainDevice) RMSNormBackwardX(dx, dx16, x, w, dy *DevBuf, rows, d int, eps float64, add bool) error {
	if err := needAll("RMSNormBackwardX", func() error { return need("", "dx", dx, F32, rows*d) }, func() error { return need("", "x", x, F32, rows*d) },
		func() error { return need("", "w", w, F32, d) }, func() error { return need("", "dy", dy, F32, rows*d) },
		func() error { return needOpt("dx16", dx16, rows*d) }); err != nil {
		return err
	}
	if add {
		return t.launch("tr_rmsnorm_dx_add", dim3{x: rows}, rowBlock(d), 0, new(args).p(dx.ptr).pOpt(dx16).p(x.ptr).p(w.ptr).p(dy.ptr).i(rows).i(d).f(float32(eps)))
	}
	return t.launch("tr_rmsnorm_dx", dim3{x: rows}, rowBlock(d), 0,
		new(args).p(dx.ptr).pOpt(dx16).pOpt(nil).p(x.ptr).p(w.ptr).p(dy.ptr).i(rows).i(d).f(float32(eps)))
}

// rmsDWRows is the rows per partial sum of RMSNorm's dw (both paths: the same bits).
const rmsDWRows = 64

// rmsBlockSumSmem is the static shared memory of tr_rmsnorm_bwd_rows (block_sum's
// 32 floats): the default launch limit of 48 KiB covers static and dynamic bytes together.
const rmsBlockSumSmem = 32 * 4

// RMSNormBackwardXW writes dx (add: into dx's contents) and, when dx16 is not nil, bf16 of
// what dx then holds, and dw (+)= Σ_rows dy⊙x·r, reading x and dy once: the bits of
// RMSNormBackwardX and of RMSNormBackward's dw. Rows wider than 12256 take those two.
func (t *TrainDevice) RMSNormBackwardXW(dx, dx16, dw, x, w, dy *DevBuf, rows, d int, eps float64, add, accumulateW bool) error {
	if 4*d+rmsBlockSumSmem > 48<<10 { // the column sums and the block sum's scratch fit 48 KiB
		if err := t.RMSNormBackwardX(dx, dx16, x, w, dy, rows, d, eps, add); err != nil {
			return err
		}
		return t.RMSNormBackward(nil, dw, x, w, dy, rows, d, eps, accumulateW)
	}
	if err := needAll("RMSNormBackwardXW", func() error { return need("", "dx", dx, F32, rows*d) }, func() error { return need("", "x", x, F32, rows*d) },
		func() error { return need("", "w", w, F32, d) }, func() error { return need("", "dy", dy, F32, rows*d) },
		func() error { return need("", "dw", dw, F32, d) }, func() error { return needOpt("dx16", dx16, rows*d) }); err != nil {
		return err
	}
	chunks := (rows + rmsDWRows - 1) / rmsDWRows
	part, err := t.scratchBuf("rms.part", F32, chunks*d)
	if err != nil {
		return err
	}
	if err := t.launch("tr_rmsnorm_bwd_rows", dim3{x: chunks}, rowBlock(d), 4*d,
		new(args).p(dx.ptr).pOpt(dx16).p(part.ptr).p(x.ptr).p(w.ptr).p(dy.ptr).i(rows).i(d).f(float32(eps)).i(rmsDWRows).i(b2i(add))); err != nil {
		return err
	}
	return t.launch("tr_colsum", dim3{x: (d + 255) / 256}, 256, 0, new(args).p(dw.ptr).p(part.ptr).i(chunks).i(d).i(b2i(accumulateW)))
}

func (t *TrainDevice) RMSNormBackward(dx, dw, x, w, dy *DevBuf, rows, d int, eps float64, accumulateW bool) error {
	if err := needAll("RMSNormBackward", func() error { return need("", "x", x, F32, rows*d) }, func() error { return need("", "w", w, F32, d) },
		func() error { return need("", "dy", dy, F32, rows*d) }); err != nil {
		return err
	}
	rinv, err := t.scratchBuf("rms.rinv", F32, rows)
	if err != nil {
		return err
	}
	if dx != nil {
		if err := need("RMSNormBackward", "dx", dx, F32, rows*d); err != nil {
			return err
		}
		if err := t.launch("tr_rmsnorm_dx", dim3{x: rows}, rowBlock(d), 0,
			new(args).p(dx.ptr).pOpt(nil).p(rinv.ptr).p(x.ptr).p(w.ptr).p(dy.ptr).i(rows).i(d).f(float32(eps))); err != nil {
			return err
		}
	} else if err := t.launch("tr_rms_inv", dim3{x: rows}, rowBlock(d), 0, new(args).p(rinv.ptr).p(x.ptr).i(rows).i(d).f(float32(eps))); err != nil {
		return err
	}
	if dw == nil {
		return nil
	}
	if err := need("RMSNormBackward", "dw", dw, F32, d); err != nil {
		return err
	}
	const per = rmsDWRows
	chunks := (rows + per - 1) / per
	part, err := t.scratchBuf("rms.part", F32, chunks*d)
	if err != nil {
		return err
	}
	if err := t.launch("tr_rmsnorm_dw_part", dim3{x: (d + 127) / 128, y: chunks}, 128, 0,
		new(args).p(part.ptr).p(x.ptr).p(dy.ptr).p(rinv.ptr).i(rows).i(d).i(per)); err != nil {
		return err
	}
	acc := 0
	if accumulateW {
		acc = 1
	}
	return t.launch("tr_colsum", dim3{x: (d + 255) / 256}, 256, 0, new(args).p(dw.ptr).p(part.ptr).i(chunks).i(d).i(acc))
}

// ---- RoPE

// RoPETables are the rotation tables of one (layout, theta, D, T): cos and sin of every
// (position, pair) in float64 [T·D/2], and the pairs' channels.
type RoPETables struct {
	Cos, Sin, PairA, PairB *DevBuf
	D, T                   int
}

// RoPEHostTables computes the tables exactly as graph/ops does (model.RoPE's angles, math.Sincos).
func RoPEHostTables(layout model.RoPELayout, theta float64, D, T int) (cos, sin []float64, pairA, pairB []int32) {
	r := model.NewRoPE(model.Config{Dim: D, NHeads: 1, RopeTheta: theta, RoPE: layout})
	cos, sin = make([]float64, T*D/2), make([]float64, T*D/2)
	for i := 0; i < D/2; i++ {
		a, b := r.Pair(i)
		pairA, pairB = append(pairA, int32(a)), append(pairB, int32(b))
		for p := 0; p < T; p++ {
			sin[p*D/2+i], cos[p*D/2+i] = math.Sincos(r.Angle(i, p))
		}
	}
	return cos, sin, pairA, pairB
}

// NewRoPETables uploads the tables of RoPEHostTables.
func (t *TrainDevice) NewRoPETables(layout model.RoPELayout, theta float64, D, T int) (*RoPETables, error) {
	if D <= 0 || D%2 != 0 || T <= 0 {
		return nil, fmt.Errorf("RoPE tables: invalid D %d, T %d", D, T)
	}
	c, s, a, b := RoPEHostTables(layout, theta, D, T)
	tab := &RoPETables{D: D, T: T}
	var err error
	if tab.Cos, err = t.FromF64(c); err == nil {
		if tab.Sin, err = t.FromF64(s); err == nil {
			if tab.PairA, err = t.FromI32(a); err == nil {
				tab.PairB, err = t.FromI32(b)
			}
		}
	}
	if err != nil {
		tab.Free()
		return nil, err
	}
	return tab, nil
}

// Free releases the tables.
func (r *RoPETables) Free() {
	for _, b := range []*DevBuf{r.Cos, r.Sin, r.PairA, r.PairB} {
		b.Free()
	}
}

// RoPE rotates every head of x [rows, heads·D] (row n at position n mod T) after scaling channel
// ch (−1: none) by s; inverse is the backward (rotate by −angle, then scale). y may not alias x.
func (t *TrainDevice) RoPE(y, x *DevBuf, tab *RoPETables, rows, heads, ch int, s float64, inverse bool) error {
	return t.RoPE16(y, nil, x, tab, rows, heads, ch, s, inverse)
}

// RoPE16 is RoPE that also writes bf16(y) into y16 when it is not nil (then y may be nil: an
// attention operand whose fp32 value nothing reads).
func (t *TrainDevice) RoPE16(y, y16, x *DevBuf, tab *RoPETables, rows, heads, ch int, s float64, inverse bool) error {
	n := rows * heads * tab.D
	if err := needAll("RoPE", func() error { return needOut("y", y, y16, n) }, func() error { return need("", "x", x, F32, n) },
		func() error { return needOpt("y16", y16, n) }); err != nil {
		return err
	}
	inv := 0
	if inverse {
		inv = 1
	}
	a := new(args).pOpt(y).pOpt(y16).p(x.ptr).p(tab.Cos.ptr).p(tab.Sin.ptr).p(tab.PairA.ptr).p(tab.PairB.ptr).
		i(rows).i(heads).i(tab.D).i(tab.T).i(ch).f64(s).i(inv)
	cols := (heads*tab.D/2 + 255) / 256
	return t.launch("tr_rope_rows", dim3{x: max(1, min(rows, t.d.sms*8/cols)), y: cols}, 256, 0, a)
}

// ---- SwiGLU

// aligned16 reports whether every buffer given (nil ones aside) starts on a 16-byte boundary.
func aligned16(bufs ...*DevBuf) bool {
	for _, b := range bufs {
		if b != nil && b.ptr%16 != 0 {
			return false
		}
	}
	return true
}

// SwiGLUForward is out = silu(a)·b; out16, when not nil, also gets bf16(out). out may be nil
// when out16 is not (a GEMM operand whose fp32 value nothing reads).
func (t *TrainDevice) SwiGLUForward(out, out16, a, b *DevBuf) error {
	n := a.n
	if err := needAll("SwiGLU", func() error { return needOut("out", out, out16, n) }, func() error { return need("", "b", b, F32, n) },
		func() error { return needOpt("out16", out16, n) }); err != nil {
		return err
	}
	if n%4 == 0 && aligned16(out, a, b) && aligned8(out16) { // 16-byte accesses where they line up
		return t.launch1D("tr_swiglu_fwd4", int64(n/4), new(args).pOpt(out).pOpt(out16).p(a.ptr).p(b.ptr).i64(int64(n/4)))
	}
	return t.launch1D("tr_swiglu_fwd", int64(n), new(args).pOpt(out).pOpt(out16).p(a.ptr).p(b.ptr).i64(int64(n)))
}

// SwiGLUBackward writes da and db (the two halves of graph/ops' packed gradient); da16 and
// db16, when not nil, also get their bf16 copies.
func (t *TrainDevice) SwiGLUBackward(da, db, da16, db16, a, b, dy *DevBuf) error {
	n := a.n
	if err := needAll("SwiGLUBackward", func() error { return need("", "da", da, F32, n) }, func() error { return need("", "db", db, F32, n) },
		func() error { return need("", "b", b, F32, n) }, func() error { return need("", "dy", dy, F32, n) },
		func() error { return needOpt("da16", da16, n) }, func() error { return needOpt("db16", db16, n) }); err != nil {
		return err
	}
	if n%4 == 0 && aligned16(da, db, a, b, dy) && aligned8(da16, db16) {
		return t.launch1D("tr_swiglu_bwd4", int64(n/4), new(args).p(da.ptr).p(db.ptr).pOpt(da16).pOpt(db16).p(a.ptr).p(b.ptr).p(dy.ptr).i64(int64(n/4)))
	}
	return t.launch1D("tr_swiglu_bwd", int64(n), new(args).p(da.ptr).p(db.ptr).pOpt(da16).pOpt(db16).p(a.ptr).p(b.ptr).p(dy.ptr).i64(int64(n)))
}

// Add writes out = a + b over n elements (a gradient sum of two tensors of one shape) and, when
// out16 is not nil, bf16(out) into out16: EW's EwAdd with 16-byte accesses where the buffers
// allow them, so the same bits.
func (t *TrainDevice) Add(out, out16, a, b *DevBuf, n int) error {
	if err := needAll("Add", func() error { return need("", "out", out, F32, n) }, func() error { return need("", "a", a, F32, n) },
		func() error { return need("", "b", b, F32, n) }, func() error { return needOpt("out16", out16, n) }); err != nil {
		return err
	}
	if n%4 == 0 && aligned16(out, a, b) && aligned8(out16) {
		return t.launch1D("tr_add4", int64(n/4), new(args).p(out.ptr).pOpt(out16).p(a.ptr).p(b.ptr).i64(int64(n/4)))
	}
	if err := t.EW(EwAdd, out, a, b, n, false, false); err != nil {
		return err
	}
	if out16 == nil {
		return nil
	}
	return t.CastBF16(out16, out.Slice(0, n))
}

// needOpt checks an optional bf16 copy of n elements (nil passes).
func needOpt(name string, b *DevBuf, n int) error {
	if b == nil {
		return nil
	}
	return need("", name, b, BF16, n)
}

// aligned8 reports whether every buffer given (nil ones aside) starts on an 8-byte boundary.
func aligned8(bufs ...*DevBuf) bool {
	for _, b := range bufs {
		if b != nil && b.ptr%8 != 0 {
			return false
		}
	}
	return true
}

// ---- Embedding

// EmbeddingForward gathers rows ids [n] of table [V, d] into out [n, d]. Ids must be in range
// (EmbeddingIndex checks them on the host, where they come from).
func (t *TrainDevice) EmbeddingForward(out, table, ids *DevBuf, n, d int) error {
	if err := needAll("Embedding", func() error { return need("", "out", out, F32, n*d) }, func() error { return need("", "ids", ids, I32, n) }); err != nil {
		return err
	}
	return t.launch1D("tr_embed_fwd", int64(n*d), new(args).p(out.ptr).p(table.ptr).p(ids.ptr).i(n).i(d))
}

// EmbeddingIndex is the host-side counting sort that makes the backward a gather: positions of
// token v are pos[off[v]:off[v+1]], ascending. It rejects ids outside [0, V).
func EmbeddingIndex(ids []int32, V int) (off, pos []int32, err error) {
	off = make([]int32, V+1)
	for n, id := range ids {
		if id < 0 || int(id) >= V {
			return nil, nil, fmt.Errorf("Embedding: token id %d at index %d is outside [0, %d)", id, n, V)
		}
		off[id+1]++
	}
	for v := 0; v < V; v++ {
		off[v+1] += off[v]
	}
	pos = make([]int32, len(ids))
	next := append([]int32(nil), off[:V]...)
	for n, id := range ids {
		pos[next[id]] = int32(n)
		next[id]++
	}
	return off, pos, nil
}

// EmbeddingBackward is dE [V, d] (+)= scatter-add of dy [n, d] by the ids behind (off, pos)
// (EmbeddingIndex), as one sequential fp32 sum per element in position order: deterministic and
// equal bit for bit to the CPU's scatterAdd (when not accumulating).
func (t *TrainDevice) EmbeddingBackward(dE, dy, off, pos *DevBuf, V, d int, accumulate bool) error {
	if err := needAll("EmbeddingBackward", func() error { return need("", "dE", dE, F32, V*d) }, func() error { return need("", "off", off, I32, V+1) },
		func() error { return need("", "pos", pos, I32, 0) }, func() error { return need("", "dy", dy, F32, pos.n*d) }); err != nil {
		return err
	}
	acc := 0
	if accumulate {
		acc = 1
	}
	return t.launch1D("tr_embed_bwd", int64(V*d), new(args).p(dE.ptr).p(dy.ptr).p(off.ptr).p(pos.ptr).i(V).i(d).i(acc))
}

// ---- Losses

// SoftmaxCE writes loss[0] = mean over tokens with target ≥ 0 of −log softmax(logits)[target]
// and loss[1] = that token count, for logits [rows, V] and targets I32 [rows]. Rows are
// normalised by their own maxima.
func (t *TrainDevice) SoftmaxCE(loss, logits, targets *DevBuf, rows, V int) error {
	if err := t.lossCheck("SoftmaxCE", loss, 2, logits, nil, targets, rows, V); err != nil {
		return err
	}
	rl, err := t.scratchBuf("loss.rows", F32, rows)
	if err != nil {
		return err
	}
	if err := t.launch("tr_xent_rows", dim3{x: rows}, rowBlock(V), 0, new(args).p(rl.ptr).p(logits.ptr).p(targets.ptr).i(rows).i(V)); err != nil {
		return err
	}
	return t.launch("tr_mean_loss", dim3{x: 1}, 1024, 0, new(args).p(loss.ptr).p(rl.ptr).p(targets.ptr).i(rows))
}

// SoftmaxCEBackward writes dl = scale·(softmax − onehot) (zero rows where target < 0), with
// scale = dloss / counted tokens.
//
// gScale, when not nil, is a device scalar F32[1] that multiplies scale (the loss's upstream
// gradient, computed on the device by the executor).
func (t *TrainDevice) SoftmaxCEBackward(dl, logits, targets *DevBuf, rows, V int, scale float32, gScale *DevBuf) error {
	return t.SoftmaxCEBackward16(dl, nil, logits, targets, rows, V, scale, gScale)
}

// SoftmaxCEBackward16 is SoftmaxCEBackward that also writes bf16(dl) into dl16 when it is not
// nil (then dl may be nil: the head's GEMM operand, whose fp32 value nothing reads).
func (t *TrainDevice) SoftmaxCEBackward16(dl, dl16, logits, targets *DevBuf, rows, V int, scale float32, gScale *DevBuf) error {
	out := dl
	if out == nil && dl16 != nil {
		out = logits // lossCheck's shape check of the output; the kernel gets null
	}
	if err := t.lossCheck("SoftmaxCEBackward", out, rows*V, logits, nil, targets, rows, V); err != nil {
		return err
	}
	if err := needOpt("dl16", dl16, rows*V); err != nil {
		return err
	}
	return t.launch("tr_xent_bwd", dim3{x: rows}, rowBlock(V), 0, new(args).pOpt(dl).pOpt(dl16).p(logits.ptr).p(targets.ptr).i(rows).i(V).f(scale).pOpt(gScale))
}

// SoftmaxKL writes loss[0] = mean over counted tokens of KL(softmax(teacher) ‖ softmax(logits)),
// loss[1] = the count (targets only mask, as graph/ops SoftmaxKL).
func (t *TrainDevice) SoftmaxKL(loss, logits, teacher, targets *DevBuf, rows, V int) error {
	if err := t.lossCheck("SoftmaxKL", loss, 2, logits, teacher, targets, rows, V); err != nil {
		return err
	}
	rl, err := t.scratchBuf("loss.rows", F32, rows)
	if err != nil {
		return err
	}
	if err := t.launch("tr_kl_rows", dim3{x: rows}, rowBlock(V), 0, new(args).p(rl.ptr).p(logits.ptr).p(teacher.ptr).p(targets.ptr).i(rows).i(V)); err != nil {
		return err
	}
	return t.launch("tr_mean_loss", dim3{x: 1}, 1024, 0, new(args).p(loss.ptr).p(rl.ptr).p(targets.ptr).i(rows))
}

// SoftmaxKLBackward writes dl = scale·(softmax(logits) − softmax(teacher)), zero rows where
// target < 0, scale = dloss / counted tokens.
// (gScale as SoftmaxCEBackward).
func (t *TrainDevice) SoftmaxKLBackward(dl, logits, teacher, targets *DevBuf, rows, V int, scale float32, gScale *DevBuf) error {
	if err := t.lossCheck("SoftmaxKLBackward", dl, rows*V, logits, teacher, targets, rows, V); err != nil {
		return err
	}
	return t.launch("tr_kl_bwd", dim3{x: rows}, rowBlock(V), 0, new(args).p(dl.ptr).p(logits.ptr).p(teacher.ptr).p(targets.ptr).i(rows).i(V).f(scale).pOpt(gScale))
}

// lossCheck checks a loss op's operands; outN is the output's length (2 for a loss and its
// token count, rows·V for a gradient).
func (t *TrainDevice) lossCheck(op string, out *DevBuf, outN int, logits, teacher, targets *DevBuf, rows, V int) error {
	checks := []func() error{
		func() error { return need("", "output", out, F32, outN) },
		func() error { return need("", "logits", logits, F32, rows*V) },
		func() error { return need("", "targets", targets, I32, rows) },
	}
	if teacher != nil {
		checks = append(checks, func() error { return need("", "teacher", teacher, F32, rows*V) })
	}
	return needAll(op, checks...)
}

// ---- DMC

// DMCGeom is graph/ops.DMCSpec for the device ops.
type DMCGeom struct {
	QHeads, KVHeads, HeadD, SeqLen int
	Channel                        int
	DecisionOffset                 float64
	ImportanceOffset               float64
	Temperature                    float64
	Window                         int
}

func (g DMCGeom) check(op string, rows int) error {
	if g.QHeads <= 0 || g.KVHeads <= 0 || g.QHeads%g.KVHeads != 0 || g.HeadD <= 0 || g.HeadD > 1024 || g.SeqLen <= 0 ||
		g.Channel < 0 || g.Channel >= g.HeadD || !(g.Temperature > 0) || g.Window < 0 || rows%g.SeqLen != 0 {
		return fmt.Errorf("%s: invalid DMC geometry %+v for %d rows", op, g, rows)
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// DMCDecide writes α [rows, Hkv] from pre-RoPE keys k [rows, Hkv·D] and noise [rows, Hkv];
// mode is the graph's decision mode (0 soft, 1 hard, 2 straight-through: ops.DecisionMode).
func (t *TrainDevice) DMCDecide(alpha, k, noise *DevBuf, g DMCGeom, rows int, mode int) error {
	H, D := g.KVHeads, g.HeadD
	if err := needAll("DMCDecide", func() error { return g.check("", rows) }, func() error { return need("", "alpha", alpha, F32, rows*H) },
		func() error { return need("", "k", k, F32, rows*H*D) }, func() error { return need("", "noise", noise, F32, rows*H) }); err != nil {
		return err
	}
	return t.launch1D("tr_dmc_decide", int64(rows*H), new(args).p(alpha.ptr).p(k.ptr).p(noise.ptr).i(rows).i(H).i(D).i(g.SeqLen).i(g.Channel).
		f64(g.DecisionOffset).f64(g.Temperature).i(mode))
}

// needDecideBackward checks the buffers of DMCDecideBackward and DMCDecideBackwardAdd.
func needDecideBackward(op string, dk, k, noise, dA *DevBuf, g DMCGeom, rows int) error {
	H, D := g.KVHeads, g.HeadD
	return needAll(op, func() error { return g.check("", rows) }, func() error { return need("", "dk", dk, F32, rows*H*D) },
		func() error { return need("", "k", k, F32, rows*H*D) }, func() error { return need("", "noise", noise, F32, rows*H) },
		func() error { return need("", "dalpha", dA, F32, rows*H) })
}

// needImportanceBackward checks the buffers of DMCImportanceBackward and its Add form.
func needImportanceBackward(op string, dq, q, dW *DevBuf, g DMCGeom, rows int) error {
	n := rows * g.QHeads * g.HeadD
	return needAll(op, func() error { return g.check("", rows) }, func() error { return need("", "dq", dq, F32, n) },
		func() error { return need("", "q", q, F32, n) }, func() error { return need("", "domega", dW, F32, rows*g.KVHeads) })
}

// DMCDecideBackward writes dk [rows, Hkv·D] (non-zero only on the decision channel).
func (t *TrainDevice) DMCDecideBackward(dk, k, noise, dA *DevBuf, g DMCGeom, rows int, mode int) error {
	H, D := g.KVHeads, g.HeadD
	if err := needDecideBackward("DMCDecideBackward", dk, k, noise, dA, g, rows); err != nil {
		return err
	}
	a := new(args).p(dk.ptr).p(k.ptr).p(noise.ptr).p(dA.ptr).i(rows).i(H).i(D).i(g.SeqLen).
		i(g.Channel).f64(g.DecisionOffset).f64(g.Temperature).i(mode)
	return t.launchRows("tr_dmc_decide_bwd_rows", rows*H, a)
}

// DMCDecideBackwardAdd adds DMCDecideBackward's gradient into dk, which holds another
// gradient of k: only the decision channel is touched (the fold of the op and the sum).
func (t *TrainDevice) DMCDecideBackwardAdd(dk, k, noise, dA *DevBuf, g DMCGeom, rows int, mode int) error {
	H, D := g.KVHeads, g.HeadD
	if err := needDecideBackward("DMCDecideBackwardAdd", dk, k, noise, dA, g, rows); err != nil {
		return err
	}
	return t.launch1D("tr_dmc_decide_bwd_add", int64(rows*H), new(args).p(dk.ptr).p(k.ptr).p(noise.ptr).p(dA.ptr).i(rows).i(H).i(D).i(g.SeqLen).
		i(g.Channel).f64(g.DecisionOffset).f64(g.Temperature).i(mode))
}

// DMCImportance writes ω [rows, Hkv] = σ(mean_group q[ch] + offset) + eps (eps: the float32
// machine epsilon 2⁻²³, dmc.Epsilon[float32]).
func (t *TrainDevice) DMCImportance(omega, q *DevBuf, g DMCGeom, rows int, eps float64) error {
	if err := needAll("DMCImportance", func() error { return g.check("", rows) }, func() error { return need("", "omega", omega, F32, rows*g.KVHeads) },
		func() error { return need("", "q", q, F32, rows*g.QHeads*g.HeadD) }); err != nil {
		return err
	}
	return t.launch1D("tr_dmc_importance", int64(rows*g.KVHeads), new(args).p(omega.ptr).p(q.ptr).i(rows).i(g.QHeads).i(g.KVHeads).i(g.HeadD).
		i(g.Channel).f64(g.ImportanceOffset).f64(eps))
}

// DMCImportanceBackward writes dq [rows, Hq·D] (non-zero only on the decision channel).
func (t *TrainDevice) DMCImportanceBackward(dq, q, dW *DevBuf, g DMCGeom, rows int) error {
	if err := needImportanceBackward("DMCImportanceBackward", dq, q, dW, g, rows); err != nil {
		return err
	}
	a := new(args).p(dq.ptr).p(q.ptr).p(dW.ptr).i(rows).i(g.QHeads).i(g.KVHeads).i(g.HeadD).
		i(g.Channel).f64(g.ImportanceOffset)
	return t.launchRows("tr_dmc_importance_bwd_rows", rows*g.QHeads, a)
}

// DMCImportanceBackwardAdd adds DMCImportanceBackward's gradient into dq (only the decision
// channel of every query head is touched).
func (t *TrainDevice) DMCImportanceBackwardAdd(dq, q, dW *DevBuf, g DMCGeom, rows int) error {
	if err := needImportanceBackward("DMCImportanceBackwardAdd", dq, q, dW, g, rows); err != nil {
		return err
	}
	return t.launch1D("tr_dmc_importance_bwd_add", int64(rows*g.QHeads), new(args).p(dq.ptr).p(q.ptr).p(dW.ptr).i(rows).i(g.QHeads).i(g.KVHeads).
		i(g.HeadD).i(g.Channel).f64(g.ImportanceOffset))
}

// DMCHardCount writes count [B] = #{α > 0.5} per sequence, α [B·T, H] (per = T·H).
func (t *TrainDevice) DMCHardCount(count, alpha *DevBuf, B, per int) error {
	if err := needAll("DMCHardCount", func() error { return need("", "count", count, F32, B) }, func() error { return need("", "alpha", alpha, F32, B*per) }); err != nil {
		return err
	}
	return t.launch("tr_dmc_hardcount", dim3{x: B}, rowBlock(per), 0, new(args).p(count.ptr).p(alpha.ptr).i(per))
}

// DMCHardCountBackward writes dα = g[b] for every α of sequence b (straight-through).
func (t *TrainDevice) DMCHardCountBackward(dA, g *DevBuf, B, per int) error {
	if err := needAll("DMCHardCountBackward", func() error { return need("", "dalpha", dA, F32, B*per) }, func() error { return need("", "g", g, F32, B) }); err != nil {
		return err
	}
	return t.launch1D("tr_dmc_hardcount_bwd", int64(B*per), new(args).p(dA.ptr).p(g.ptr).i64(int64(B*per)).i(per))
}

// DMCHeadCount writes count[b·H + h] = #{t : α[(b·T + t)·H + h] > 0.5} for α [B·T, H].
func (t *TrainDevice) DMCHeadCount(count, alpha *DevBuf, B, T, H int) error {
	if err := needAll("DMCHeadCount", func() error { return need("", "count", count, F32, B*H) }, func() error { return need("", "alpha", alpha, F32, B*T*H) }); err != nil {
		return err
	}
	return t.launch("tr_dmc_headcount", dim3{x: B * H}, rowBlock(T), 0, new(args).p(count.ptr).p(alpha.ptr).i(T).i(H))
}

// DMCHeadCountBackward writes dα[(b·T + t)·H + h] = g[b·H + h] (straight-through).
func (t *TrainDevice) DMCHeadCountBackward(dA, g *DevBuf, B, T, H int) error {
	if err := needAll("DMCHeadCountBackward", func() error { return need("", "dalpha", dA, F32, B*T*H) }, func() error { return need("", "g", g, F32, B*H) }); err != nil {
		return err
	}
	return t.launch1D("tr_dmc_headcount_bwd", int64(B*T*H), new(args).p(dA.ptr).p(g.ptr).i64(int64(B*T*H)).i(T).i(H))
}

// mergeWarps is the number of rows (one warp each) of a DMC merge block.
const mergeWarps = 8

// mergeKernel names the merge kernel of one pass: the warp-window variant (lane k = window
// slot k) where the window fits a warp, else the general one.
func (t *TrainDevice) mergeKernel(name string, window int) string {
	if window >= 1 && window <= 32 && !t.MergeGeneral {
		return name + "_w"
	}
	return name
}

// mergeRows is the rows per warp of the tr_dmc_merge_*_wr kernels (MG_R in train.cu).
const mergeRows = 4

// mergeLaunch is the kernel and grid width of one merge pass: the rows-per-warp kernel where
// TrainDevice.MergeRows asks for it and the window, head dimension and buffers allow it, else
// mergeKernel's with one row per warp.
func (t *TrainDevice) mergeLaunch(name string, g DMCGeom, bufs ...*DevBuf) (string, int) {
	k := t.mergeKernel(name, g.Window)
	if t.MergeRows && k != name && g.HeadD%4 == 0 && aligned16(bufs...) { // k != name: the warp-window kernel
		return k + "r", (g.SeqLen + mergeWarps*mergeRows - 1) / (mergeWarps * mergeRows)
	}
	return k, (g.SeqLen + mergeWarps - 1) / mergeWarps
}

// DMCMerge writes the windowed partial accumulations y [rows, Hkv·D] of x under α and ω
// ([rows, Hkv]); y may not alias x.
func (t *TrainDevice) DMCMerge(y, x, alpha, omega *DevBuf, g DMCGeom, rows int) error {
	return t.DMCMerge16(y, nil, x, alpha, omega, g, rows)
}

// DMCMerge16 is DMCMerge that also writes bf16(y) into y16 when it is not nil (then y may be
// nil: an attention operand whose fp32 value nothing reads).
func (t *TrainDevice) DMCMerge16(y, y16, x, alpha, omega *DevBuf, g DMCGeom, rows int) error {
	H, D := g.KVHeads, g.HeadD
	if err := needAll("DMCMerge", func() error { return g.check("", rows) }, func() error { return needOut("y", y, y16, rows*H*D) },
		func() error { return needOpt("y16", y16, rows*H*D) },
		func() error { return need("", "x", x, F32, rows*H*D) }, func() error { return need("", "alpha", alpha, F32, rows*H) },
		func() error { return need("", "omega", omega, F32, rows*H) }); err != nil {
		return err
	}
	B := rows / g.SeqLen
	kern, gx := t.mergeLaunch("tr_dmc_merge_fwd", g, y, x, y16) // the rows kernel writes 4 bf16 at a time
	return t.launch(kern, dim3{x: gx, y: B * H}, 32*mergeWarps, 0,
		new(args).pOpt(y).pOpt(y16).p(x.ptr).p(alpha.ptr).p(omega.ptr).i(g.SeqLen).i(H).i(D).i(g.Window))
}

// DMCMergeBackward writes dx [rows, Hkv·D], dα and dω [rows, Hkv] (graph/ops' packed
// [dx | dα | dω]) in two gather passes without atomics: O(T·W·D) per (sequence, head), scratch
// O(rows·Hkv·W) (W = 0: O(rows·Hkv·T), for short sequences only).
func (t *TrainDevice) DMCMergeBackward(dx, dA, dW, x, alpha, omega, dy *DevBuf, g DMCGeom, rows int) error {
	H, D := g.KVHeads, g.HeadD
	if err := needAll("DMCMergeBackward", func() error { return g.check("", rows) }, func() error { return need("", "dx", dx, F32, rows*H*D) },
		func() error { return need("", "dalpha", dA, F32, rows*H) }, func() error { return need("", "domega", dW, F32, rows*H) },
		func() error { return need("", "x", x, F32, rows*H*D) }, func() error { return need("", "alpha", alpha, F32, rows*H) },
		func() error { return need("", "omega", omega, F32, rows*H) }, func() error { return need("", "dy", dy, F32, rows*H*D) }); err != nil {
		return err
	}
	span := g.SeqLen
	if g.Window > 0 {
		span = min(g.Window, g.SeqLen)
	}
	perWarp := 3 * span * 4 // c, ρ and the dot products of one row's window
	if perWarp > 48<<10 {
		return fmt.Errorf("DMCMergeBackward: window span %d needs %d bytes of shared memory (at most 48 KiB): use a window (dmc window ≤ 4096) or shorter sequences", span, perWarp)
	}
	warpsA := min(mergeWarps, (48<<10)/perWarp)
	kernA, smemA, gxA := t.mergeKernel("tr_dmc_merge_bwd_a", g.Window), warpsA*perWarp, (g.SeqLen+warpsA-1)/warpsA
	if kernA != "tr_dmc_merge_bwd_a" {
		// the warp-window kernels keep their windows in registers
		smemA = 0
		kernA, gxA = t.mergeLaunch("tr_dmc_merge_bwd_a", g, x, dy)
		warpsA = mergeWarps
	}
	kernB, gxB := t.mergeLaunch("tr_dmc_merge_bwd_b", g, dx, dy)
	rowZ, err := t.scratchBuf("merge.z", F32, rows*H)
	if err != nil {
		return err
	}
	cW, err := t.scratchBuf("merge.cw", F32, rows*H*span)
	if err != nil {
		return err
	}
	cA, err := t.scratchBuf("merge.ca", F32, rows*H*span)
	if err != nil {
		return err
	}
	B := rows / g.SeqLen
	if err := t.launch(kernA, dim3{x: gxA, y: B * H}, 32*warpsA, smemA,
		new(args).p(rowZ.ptr).p(cW.ptr).p(cA.ptr).p(x.ptr).p(alpha.ptr).p(omega.ptr).p(dy.ptr).i(g.SeqLen).i(H).i(D).i(g.Window).i(span)); err != nil {
		return err
	}
	return t.launch(kernB, dim3{x: gxB, y: B * H}, 32*mergeWarps, 0,
		new(args).p(dx.ptr).p(dA.ptr).p(dW.ptr).p(alpha.ptr).p(omega.ptr).p(dy.ptr).p(rowZ.ptr).p(cW.ptr).p(cA.ptr).
			i(g.SeqLen).i(H).i(D).i(g.Window).i(span))
}

// LogisticNoise writes the Gumbel-sigmoid noise of one layer, dst [B·T, Hkv] (row b·T + t,
// column h), from a dmc.NoiseKey's SplitMix64 state, as dmc.NoiseKey.Fill and
// graph.Exec.NoiseInto lay it out (float64 arithmetic, scaled by scale, rounded to fp32).
func (t *TrainDevice) LogisticNoise(dst *DevBuf, state uint64, B, T, Hkv int, scale float64) error {
	if err := needAll("LogisticNoise", func() error { return need("", "dst", dst, F32, B*T*Hkv) }); err != nil {
		return err
	}
	return t.launch1D("tr_noise", int64(B*T*Hkv), new(args).p(dst.ptr).i64(int64(state)).i(B).i(T).i(Hkv).f64(scale))
}

// ---- Attention

// AttnGeom is graph/ops.AttnSpec for the device ops (Masked: an α input is given).
// TensorCores selects the bf16 tensor-core kernels (fp32 accumulation) where the head
// dimension allows them (16, 32, 64 or 128); otherwise, and when it is false, the exact fp32
// kernels run.
type AttnGeom struct {
	QHeads, KVHeads, HeadD, SeqLen int
	TensorCores                    bool
}

// tc reports whether the tensor-core kernels run for g.
func (g AttnGeom) tc() bool {
	return g.TensorCores && TensorCoreAttention(g.HeadD)
}

// Tiles of the tensor-core kernels (kernels/csrc/train.cu FA_*): 64 query rows per block in
// the forward and dq passes (32-key tiles in dq), 64 keys per block in the dk/dv pass
// (32-query tiles); four warps of 16 rows each.
const (
	tcRows    = 64
	tcThreads = 128
	// tcRows2: query rows per block of the forward with 32 rows per warp (tc_attn_fwd2_*,
	// selected by TrainDevice.Attn32Rows).
	tcRows2 = 128
)

// tcSmem returns the dynamic shared memory of the tensor-core kernels for head dimension D:
// double-buffered bf16 tiles padded by 8 elements per row, plus per-row floats.
func tcSmem(D int) (fwd, bwdQ, bwdKV int) {
	row := (D + 8) * 2
	return 4*64*row + 2*64*4, 4*32*row + 2*32*4, (2*64+4*32)*row + 6*32*4
}

// bf16Copy rounds the first n elements of src into the named scratch buffer (the tensor-core
// attention kernels read bf16 rows with cp.async).
func (t *TrainDevice) bf16Copy(name string, src *DevBuf, n int) (*DevBuf, error) {
	dst, err := t.scratchBuf(name, BF16, n)
	if err != nil {
		return nil, err
	}
	dst = dst.Slice(0, n)
	return dst, t.CastBF16(dst, src.Slice(0, n))
}

// attnBF16 returns bf16 copies of q, k and v for the tensor-core kernels.
func (t *TrainDevice) attnBF16(q, k, v *DevBuf, rows int, g AttnGeom) (q16, k16, v16 *DevBuf, err error) {
	D := g.HeadD
	if q16, err = t.bf16Copy("attn.q16", q, rows*g.QHeads*D); err != nil {
		return
	}
	if k16, err = t.bf16Copy("attn.k16", k, rows*g.KVHeads*D); err != nil {
		return
	}
	v16, err = t.bf16Copy("attn.v16", v, rows*g.KVHeads*D)
	return
}

const attnThreads = 128

// attnLanes is the number of lanes sharing one row of D channels: the smallest power of two
// that divides D and leaves at most 16 channels per lane (the kernels' register arrays).
func attnLanes(D int) (int, error) {
	for tpr := 1; tpr <= 32; tpr *= 2 {
		if D%tpr == 0 && D/tpr <= 16 {
			return tpr, nil
		}
	}
	return 0, fmt.Errorf("attention: head dimension %d is not supported (it needs a power-of-two divisor ≤ 32 leaving ≤ 16 channels per lane, e.g. D ≤ 512 and a multiple of D/16)", D)
}

// attnTile is the number of rows of the tile staged in shared memory: two [tile, D] float
// tiles plus three per-row floats within 48 KiB, at most 64.
func attnTile(D int) int {
	tile := 64
	for tile > 8 && (2*tile*D+3*tile)*4 > 48<<10 {
		tile /= 2
	}
	return tile
}

func (g AttnGeom) check(op string, rows int) error {
	if g.QHeads <= 0 || g.KVHeads <= 0 || g.QHeads%g.KVHeads != 0 || g.HeadD <= 0 || g.SeqLen <= 0 || rows%g.SeqLen != 0 {
		return fmt.Errorf("%s: invalid geometry %+v for %d rows", op, g, rows)
	}
	return nil
}

// AttentionForward writes o [rows, Hq·D] = causal GQA softmax(q·kᵀ/√D + M)·v per query head
// (graph/ops Attention; M the DMC mask log(1 − α_{j+1}) when alpha is not nil) and stats
// [2·rows·Hq] (row maxima, then log-sum-exps) for AttentionBackward. No T×T matrix is formed.
func (t *TrainDevice) AttentionForward(o, stats, q, k, v, alpha *DevBuf, g AttnGeom, rows int) error {
	Hq, Hkv, D := g.QHeads, g.KVHeads, g.HeadD
	checks := []func() error{func() error { return g.check("", rows) },
		func() error { return need("", "o", o, F32, rows*Hq*D) }, func() error { return need("", "stats", stats, F32, 2*rows*Hq) },
		func() error { return need("", "q", q, F32, rows*Hq*D) }, func() error { return need("", "k", k, F32, rows*Hkv*D) },
		func() error { return need("", "v", v, F32, rows*Hkv*D) }}
	if alpha != nil {
		checks = append(checks, func() error { return need("", "alpha", alpha, F32, rows*Hkv) })
	}
	if err := needAll("AttentionForward", checks...); err != nil {
		return err
	}
	scale := float32(1 / math.Sqrt(float64(D)))
	if g.tc() {
		q16, k16, v16, err := t.attnBF16(q, k, v, rows, g)
		if err != nil {
			return err
		}
		return t.AttentionForwardBF16(o, stats, q16, k16, v16, alpha, g, rows)
	}
	tpr, err := attnLanes(D)
	if err != nil {
		return err
	}
	per, bk := attnThreads/tpr, attnTile(D)
	return t.launch("tr_attn_fwd", dim3{x: (g.SeqLen + per - 1) / per, y: Hq, z: rows / g.SeqLen}, attnThreads, (2*bk*D+bk)*4,
		new(args).p(o.ptr).p(stats.ptr).p(q.ptr).p(k.ptr).p(v.ptr).pOpt(alpha).i(g.SeqLen).i(Hq).i(Hkv).i(D).i(tpr).i(bk).f(scale))
}

// check16 checks the bf16 operands of the tensor-core attention kernels.
func (g AttnGeom) check16(op string, rows int, q16, k16, v16 *DevBuf) error {
	if !g.tc() {
		return fmt.Errorf("%s: bf16 operands need the tensor-core kernels (head dimension 16, 32, 64 or 128), not %+v", op, g)
	}
	D := g.HeadD
	return needAll(op, func() error { return g.check("", rows) }, func() error { return need("", "q16", q16, BF16, rows*g.QHeads*D) },
		func() error { return need("", "k16", k16, BF16, rows*g.KVHeads*D) }, func() error { return need("", "v16", v16, BF16, rows*g.KVHeads*D) })
}

// AttentionForwardBF16 is AttentionForward on bf16 copies of q, k and v that the caller keeps
// (the tensor-core kernels' operands; the backward reads the same copies): the same bits.
func (t *TrainDevice) AttentionForwardBF16(o, stats, q16, k16, v16, alpha *DevBuf, g AttnGeom, rows int) error {
	Hq, Hkv, D := g.QHeads, g.KVHeads, g.HeadD
	checks := []func() error{func() error { return g.check16("", rows, q16, k16, v16) },
		func() error { return need("", "o", o, F32, rows*Hq*D) }, func() error { return need("", "stats", stats, F32, 2*rows*Hq) }}
	if alpha != nil {
		checks = append(checks, func() error { return need("", "alpha", alpha, F32, rows*Hkv) })
	}
	if err := needAll("AttentionForwardBF16", checks...); err != nil {
		return err
	}
	scale := float32(1 / math.Sqrt(float64(D)))
	smem, _, _ := tcSmem(D)
	name, perBlock := fmt.Sprintf("tc_attn_fwd_%d", D), tcRows
	if t.Attn32Rows {
		name, perBlock = fmt.Sprintf("tc_attn_fwd2_%d", D), tcRows2
		smem += tcRows2 * (D + 8) * 2 // the Q tile's own buffer
	}
	return t.launch(name, dim3{x: (g.SeqLen + perBlock - 1) / perBlock, y: Hq, z: rows / g.SeqLen}, tcThreads, smem,
		new(args).p(o.ptr).p(stats.ptr).p(q16.ptr).p(k16.ptr).p(v16.ptr).pOpt(alpha).i(g.SeqLen).i(Hq).i(Hkv).f(scale))
}

// AttentionBackwardBF16 is AttentionBackward on the bf16 copies of q, k and v the forward read
// (AttentionForwardBF16): the same bits, without casting them again.
func (t *TrainDevice) AttentionBackwardBF16(dq, dk, dv, dA, q16, k16, v16, alpha, o, stats, dO *DevBuf, g AttnGeom, rows int) error {
	if err := attnBackwardChecks("AttentionBackwardBF16", g, rows, dq, dk, dv, dA, alpha, o, stats, dO,
		func() error { return g.check16("", rows, q16, k16, v16) }); err != nil {
		return err
	}
	return t.attnBackwardTC(dq, dk, dv, dA, q16, k16, v16, alpha, o, stats, dO, g, rows)
}

// attnDelta writes δ = rowsum(o ⊙ dO) per (row, head) (a thread per row).
func (t *TrainDevice) attnDelta(o, dO *DevBuf, rows int, g AttnGeom) (*DevBuf, error) {
	n := rows * g.QHeads
	delta, err := t.scratchBuf("attn.delta", F32, n)
	if err != nil {
		return nil, err
	}
	return delta, t.launch1D("tr_attn_delta", int64(n), new(args).p(delta.ptr).p(o.ptr).p(dO.ptr).i64(int64(n)).i(g.HeadD))
}

// attnBackwardTC runs the tensor-core dq and dk/dv passes on bf16 q, k, v, with δ and bf16(dO)
// computed here.
func (t *TrainDevice) attnBackwardTC(dq, dk, dv, dA, q16, k16, v16, alpha, o, stats, dO *DevBuf, g AttnGeom, rows int) error {
	Hq, Hkv, D := g.QHeads, g.KVHeads, g.HeadD
	scale := float32(1 / math.Sqrt(float64(D)))
	B := rows / g.SeqLen
	var delta, g16 *DevBuf
	var err error
	if t.AttnDeltaRows && aligned16(o, dO) {
		n := rows * Hq
		if delta, err = t.scratchBuf("attn.delta", F32, n); err != nil {
			return err
		}
		if g16, err = t.scratchBuf("attn.dO16", BF16, n*D); err != nil {
			return err
		}
		threads := (int64(n)*int64(D/4) + 31) / 32 * 32
		if err := t.launch1D("tr_attn_delta_rows", threads, new(args).p(delta.ptr).p(g16.ptr).p(o.ptr).p(dO.ptr).i64(int64(n)).i(D)); err != nil {
			return err
		}
	} else {
		if delta, err = t.attnDelta(o, dO, rows, g); err != nil {
			return err
		}
		if g16, err = t.bf16Copy("attn.dO16", dO, rows*Hq*D); err != nil {
			return err
		}
	}
	blocks := (g.SeqLen + tcRows - 1) / tcRows
	_, smemQ, smemKV := tcSmem(D)
	if err := t.launch(fmt.Sprintf("tc_attn_bwd_q_%d", D), dim3{x: blocks, y: Hq, z: B}, tcThreads, smemQ,
		new(args).p(dq.ptr).p(q16.ptr).p(k16.ptr).p(v16.ptr).pOpt(alpha).p(stats.ptr).p(delta.ptr).p(g16.ptr).
			i(g.SeqLen).i(Hq).i(Hkv).f(scale)); err != nil {
		return err
	}
	return t.launch(fmt.Sprintf("tc_attn_bwd_kv_%d", D), dim3{x: blocks, y: Hkv, z: B}, tcThreads, smemKV,
		new(args).p(dk.ptr).p(dv.ptr).pOpt(dA).p(q16.ptr).p(k16.ptr).p(v16.ptr).pOpt(alpha).p(stats.ptr).p(delta.ptr).p(g16.ptr).
			i(g.SeqLen).i(Hq).i(Hkv).f(scale))
}

// attnBackwardChecks checks the operands both attention backwards share (the gradients, o,
// stats, dO, α with dα) after the inputs' own checks (first: fp32 or bf16 q, k, v).
func attnBackwardChecks(op string, g AttnGeom, rows int, dq, dk, dv, dA, alpha, o, stats, dO *DevBuf, first ...func() error) error {
	Hq, Hkv, D := g.QHeads, g.KVHeads, g.HeadD
	if (alpha == nil) != (dA == nil) {
		return errors.New(op + ": alpha and dalpha must be given together")
	}
	checks := append(first, func() error { return need("", "dq", dq, F32, rows*Hq*D) }, func() error { return need("", "dk", dk, F32, rows*Hkv*D) },
		func() error { return need("", "dv", dv, F32, rows*Hkv*D) }, func() error { return need("", "o", o, F32, rows*Hq*D) },
		func() error { return need("", "dO", dO, F32, rows*Hq*D) }, func() error { return need("", "stats", stats, F32, 2*rows*Hq) })
	if alpha != nil {
		checks = append(checks, func() error { return need("", "alpha", alpha, F32, rows*Hkv) },
			func() error { return need("", "dalpha", dA, F32, rows*Hkv) })
	}
	return needAll(op, checks...)
}

// AttentionBackward writes dq, dk, dv and, when alpha is not nil, dα [rows, Hkv] (graph/ops'
// packed attention gradient) from the forward's o and stats, recomputing the probabilities
// tile by tile: a delta pass, a pass per query row (dq) and a pass per key row (dk, dv, dα,
// looping over the G query heads of its KV head). No atomics.
func (t *TrainDevice) AttentionBackward(dq, dk, dv, dA, q, k, v, alpha, o, stats, dO *DevBuf, g AttnGeom, rows int) error {
	Hq, Hkv, D := g.QHeads, g.KVHeads, g.HeadD
	if err := attnBackwardChecks("AttentionBackward", g, rows, dq, dk, dv, dA, alpha, o, stats, dO,
		func() error { return g.check("", rows) }, func() error { return need("", "q", q, F32, rows*Hq*D) },
		func() error { return need("", "k", k, F32, rows*Hkv*D) }, func() error { return need("", "v", v, F32, rows*Hkv*D) }); err != nil {
		return err
	}
	if g.tc() {
		q16, k16, v16, err := t.attnBF16(q, k, v, rows, g)
		if err != nil {
			return err
		}
		return t.attnBackwardTC(dq, dk, dv, dA, q16, k16, v16, alpha, o, stats, dO, g, rows)
	}
	delta, err := t.attnDelta(o, dO, rows, g)
	if err != nil {
		return err
	}
	scale := float32(1 / math.Sqrt(float64(D)))
	B := rows / g.SeqLen
	tpr, err := attnLanes(D)
	if err != nil {
		return err
	}
	per, tile := attnThreads/tpr, attnTile(D)
	if err := t.launch("tr_attn_bwd_q", dim3{x: (g.SeqLen + per - 1) / per, y: Hq, z: B}, attnThreads, (2*tile*D+tile)*4,
		new(args).p(dq.ptr).p(q.ptr).p(k.ptr).p(v.ptr).pOpt(alpha).p(stats.ptr).p(delta.ptr).p(dO.ptr).
			i(g.SeqLen).i(Hq).i(Hkv).i(D).i(tpr).i(tile).f(scale)); err != nil {
		return err
	}
	return t.launch("tr_attn_bwd_kv", dim3{x: (g.SeqLen + per - 1) / per, y: Hkv, z: B}, attnThreads, (2*tile*D+3*tile)*4,
		new(args).p(dk.ptr).p(dv.ptr).pOpt(dA).p(q.ptr).p(k.ptr).p(v.ptr).pOpt(alpha).p(stats.ptr).p(delta.ptr).p(dO.ptr).
			i(g.SeqLen).i(Hq).i(Hkv).i(D).i(tpr).i(tile).f(scale))
}

// ---- Element-wise ops of the loss head and gradient sums

// EW writes out[i] = a[i·sa] op b[i·sb] for i < n, where a stride of 0 broadcasts a one-element
// operand (b is ignored, and may be nil, for the unary ops).
func (t *TrainDevice) EW(op EwOp, out, a, b *DevBuf, n int, aScalar, bScalar bool) error {
	sa, sb := 1-b2i(aScalar), 1-b2i(bScalar)
	checks := []func() error{func() error { return need("", "out", out, F32, n) },
		func() error { return need("", "a", a, F32, max(1, n*sa)) }}
	if op < EwNeg {
		checks = append(checks, func() error { return need("", "b", b, F32, max(1, n*sb)) })
	} else {
		b = nil
	}
	if err := needAll("EW", checks...); err != nil {
		return err
	}
	return t.launch1D("tr_ew", int64(n), new(args).p(out.ptr).p(a.ptr).pOpt(b).i64(int64(n)).i(sa).i(sb).i(int(op)))
}

// SumAll writes out[0] = Σ a[:n] (float64 sums, fixed order).
func (t *TrainDevice) SumAll(out, a *DevBuf, n int) error {
	if err := needAll("SumAll", func() error { return need("", "out", out, F32, 1) }, func() error { return need("", "a", a, F32, n) }); err != nil {
		return err
	}
	return t.launch("tr_sum_all", dim3{x: 1}, 1024, 0, new(args).p(out.ptr).p(a.ptr).i64(int64(n)))
}

// GatherRows copies rows (I32, len(rows) = nrows) of the [·, cols] matrix src into the compact
// [nrows, cols] dst; ScatterRows is the reverse.
func (t *TrainDevice) GatherRows(dst, src, rows *DevBuf, nrows, cols int) error {
	return t.rowsCopy("tr_gather_rows", dst, src, rows, nrows, cols, dst)
}

// ScatterRows writes the compact [nrows, cols] src into rows of dst.
func (t *TrainDevice) ScatterRows(dst, src, rows *DevBuf, nrows, cols int) error {
	return t.rowsCopy("tr_scatter_rows", dst, src, rows, nrows, cols, src)
}

func (t *TrainDevice) rowsCopy(name string, dst, src, rows *DevBuf, nrows, cols int, compact *DevBuf) error {
	if err := needAll(name, func() error { return need("", "rows", rows, I32, nrows) }, func() error { return need("", "compact", compact, F32, nrows*cols) },
		func() error { return need("", "dst", dst, F32, 0) }, func() error { return need("", "src", src, F32, 0) }); err != nil {
		return err
	}
	return t.launch1D(name, int64(nrows*cols), new(args).p(dst.ptr).p(src.ptr).p(rows.ptr).i64(int64(nrows*cols)).i(cols))
}

// Scale multiplies every element of a float32 buffer by s.
func (t *TrainDevice) Scale(x *DevBuf, s float32) error {
	if err := need("Scale", "x", x, F32, 0); err != nil {
		return err
	}
	return t.launch1D("tr_scale", int64(x.n), new(args).p(x.ptr).i64(int64(x.n)).f(s))
}

// ---- Optimiser

// AdamWStep holds the hyper-parameters of one AdamW update of one parameter (trainer.AdamW).
type AdamWStep struct {
	Beta1, Beta2, Eps, WeightDecay, LR float64
	Step                               int  // the update's number t ≥ 1 (bias correction)
	Decay                              bool // this parameter gets weight decay
}

// AdamW applies one update to w with gradient g and moments m, v (fp32, n = len(w)), with
// trainer.AdamW.Update's formula operation for operation (bit-identical results). clip, when
// not nil, is the device scalar GlobalNorm wrote (the gradient is scaled by it first, as
// ClipGlobalNorm does); w16, when not nil, gets bf16(w) for the next forward.
func (t *TrainDevice) AdamW(w, w16, g, m, v, clip *DevBuf, h AdamWStep) error {
	n := w.n
	if err := needAll("AdamW", func() error { return need("", "w", w, F32, n) }, func() error { return need("", "g", g, F32, n) },
		func() error { return need("", "m", m, F32, n) }, func() error { return need("", "v", v, F32, n) }); err != nil {
		return err
	}
	if w16 != nil {
		if err := need("AdamW", "w16", w16, BF16, n); err != nil {
			return err
		}
	}
	if clip != nil {
		if err := need("AdamW", "clip", clip, F32, 1); err != nil {
			return err
		}
	}
	if h.Step < 1 {
		return fmt.Errorf("AdamW: step %d, want ≥ 1", h.Step)
	}
	bc1 := 1 - math.Pow(h.Beta1, float64(h.Step))
	bc2 := 1 - math.Pow(h.Beta2, float64(h.Step))
	keep := float32(1)
	if h.Decay {
		keep = float32(1 - h.LR*h.WeightDecay)
	}
	return t.launch1D("tr_adamw", int64(n), new(args).p(w.ptr).pOpt(w16).p(g.ptr).p(m.ptr).p(v.ptr).pOpt(clip).i64(int64(n)).
		f(float32(h.Beta1)).f(float32(h.Beta2)).f(float32(1-h.Beta1)).f(float32(1-h.Beta2)).f(float32(h.LR/bc1)).
		f(float32(1/math.Sqrt(bc2))).f(float32(h.Eps)).f(keep))
}

const normChunk = 1 << 16

// GlobalNorm writes norm F64[1] = the L2 norm over all grads (float64 sums in a fixed order,
// two passes, no atomics) and clip F32[1] = maxNorm/norm when maxNorm > 0 and the norm is finite
// and larger, else 1: the factor AdamW applies (trainer.ClipGlobalNorm).
func (t *TrainDevice) GlobalNorm(norm, clip *DevBuf, maxNorm float64, grads ...*DevBuf) error {
	if err := needAll("GlobalNorm", func() error { return need("", "norm", norm, F64, 1) }, func() error { return need("", "clip", clip, F32, 1) }); err != nil {
		return err
	}
	parts := 0
	for _, g := range grads {
		if err := need("GlobalNorm", "gradient", g, F32, 0); err != nil {
			return err
		}
		parts += (g.n + normChunk - 1) / normChunk
	}
	part, err := t.scratchBuf("norm.part", F64, parts)
	if err != nil {
		return err
	}
	off := 0
	for _, g := range grads {
		nb := (g.n + normChunk - 1) / normChunk
		if nb == 0 {
			continue
		}
		if err := t.launch("tr_sumsq_part", dim3{x: nb}, 256, 0, new(args).p(part.ptr+uint64(off*8)).p(g.ptr).i64(int64(g.n)).i64(normChunk)); err != nil {
			return err
		}
		off += nb
	}
	return t.launch("tr_norm_finish", dim3{x: 1}, 1024, 0, new(args).p(norm.ptr).p(clip.ptr).p(part.ptr).i(parts).f64(maxNorm))
}
