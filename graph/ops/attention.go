package ops

import (
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// AttnSpec fixes causal grouped-query attention over rows n = b·T + t.
type AttnSpec struct {
	QHeads, KVHeads, HeadD, SeqLen int
	// Masked adds the DMC mask: a fourth input α [B·T, Hkv] hides key j from query i > j by
	// log(1 − α_{j+1}) (−∞ when α_{j+1} = 1).
	Masked bool
}

func (s AttnSpec) key() string {
	return fmt.Sprintf("Hq=%d,Hkv=%d,D=%d,T=%d,masked=%t", s.QHeads, s.KVHeads, s.HeadD, s.SeqLen, s.Masked)
}

// Attention is o = softmax(q·kᵀ/√D + M)·v per query head h against KV head h/G with the causal
// mask (and the DMC mask when Masked), q [B·T, Hq·D], k, v [B·T, Hkv·D] (k rotated), α
// [B·T, Hkv]; o [B·T, Hq·D]. Rows are normalised by their own maximum; a key whose weight is
// masked to −∞ gets weight exactly 0 (never NaN). The backward recomputes the probabilities.
func Attention(q, k, v, alpha *G.Node, s AttnSpec) (*G.Node, error) {
	if s.QHeads <= 0 || s.KVHeads <= 0 || s.QHeads%s.KVHeads != 0 || s.HeadD <= 0 || s.SeqLen <= 0 {
		return nil, fmt.Errorf("Attention: invalid spec %+v", s)
	}
	if s.Masked != (alpha != nil) {
		return nil, fmt.Errorf("Attention: α must be given exactly when the spec is masked")
	}
	in := []*G.Node{q, k, v}
	if s.Masked {
		in = append(in, alpha)
	}
	return apply(attnOp{s, false}, in...)
}

type attnOp struct {
	s    AttnSpec
	back bool // backward: inputs (q, k, v, [α,] dO) → packed [dq | dk | dv | dα]
}

func (o attnOp) key() string { return fmt.Sprintf("Attention{%s,back=%t}", o.s.key(), o.back) }
func (o attnOp) nIn() int {
	n := 3
	if o.s.Masked {
		n++
	}
	return n
}
func (o attnOp) signature() ([]arg, arg) {
	n := o.nIn()
	if o.back {
		n++
	}
	in := make([]arg, n)
	for i := range in {
		in[i] = matArg
	}
	if o.back {
		return in, vecArg
	}
	return in, matArg
}
func (o attnOp) diffWRT() []bool {
	d := make([]bool, o.nIn())
	for i := range d {
		d[i] = true
	}
	return d
}
func (o attnOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	s := o.s
	N := in[0][0]
	want := []tensor.Shape{{N, s.QHeads * s.HeadD}, {N, s.KVHeads * s.HeadD}, {N, s.KVHeads * s.HeadD}}
	if s.Masked {
		want = append(want, tensor.Shape{N, s.KVHeads})
	}
	if o.back {
		want = append(want, want[0])
	}
	for i, w := range want {
		if !in[i].Eq(w) {
			return nil, fmt.Errorf("%s: input %d has shape %v, want %v", o.key(), i, in[i], w)
		}
	}
	if N%s.SeqLen != 0 {
		return nil, fmt.Errorf("%s: %d rows are not whole sequences of %d", o.key(), N, s.SeqLen)
	}
	if o.back {
		n := N * (s.QHeads + 2*s.KVHeads) * s.HeadD
		if s.Masked {
			n += N * s.KVHeads
		}
		return tensor.Shape{n}, nil
	}
	return want[0].Clone(), nil
}
func (o attnOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	dispatch(out.Dtype(), func() { attnKernel[float32](o, out.Float32s(), in) },
		func() { attnKernel[float64](o, out.Float64s(), in) })
	return 0, nil
}
func (o attnOp) grad(in G.Nodes, _, dO *G.Node) (G.Nodes, error) {
	packed, err := apply(attnOp{o.s, true}, append(append(G.Nodes{}, in...), dO)...)
	if err != nil {
		return nil, err
	}
	shapes := make([]tensor.Shape, len(in))
	for i, n := range in {
		shapes[i] = n.Shape()
	}
	return unpackAll("Attention", packed, shapes...)
}

// alphaGradExpCap bounds the exponent of the α-gradient e^{s_ij − m_i}/L_i·(dP − δ). A key
// masked exactly to −∞ (α rounded to 1 in float arithmetic) gets no α-gradient at all: it had
// weight 0 in the forward, e^{s_ij − m_i} is unbounded for it, and the decision's backward
// multiplies dα by α(1−α) recomputed from the logit, which is tiny but not 0, so the capped
// value became gradients of 1e20 and more on a 40M model (the retrofit diverged). For a key
// with a finite mask, s_ij − m_i ≤ −log(1 − α_{j+1}) (≤ 17 in float32), far below the cap.
const alphaGradExpCap = 40

// attnBlock is the number of query rows processed together: scores are formed block by block
// against keys 0..(last row of the block), so the causal upper triangle is mostly skipped while
// every product is still a GEMM. (A variable so tests can force many small blocks.)
var attnBlock = 64

func attnKernel[T Float](o attnOp, out []T, in []G.Value) {
	s := o.s
	Hq, Hkv, D, Tn := s.QHeads, s.KVHeads, s.HeadD, s.SeqLen
	Gs := Hq / Hkv
	q, k, v := data[T](in[0]), data[T](in[1]), data[T](in[2])
	N := len(q) / (Hq * D)
	B := N / Tn
	var alpha, dO []T
	if s.Masked {
		alpha = data[T](in[3])
	}
	var dq, dk, dv, dA []T
	if o.back {
		dO = data[T](in[len(in)-1])
		off := 0
		take := func(n int) []T { r := out[off : off+n]; off += n; return r }
		dq, dk, dv = take(N*Hq*D), take(N*Hkv*D), take(N*Hkv*D)
		if s.Masked {
			dA = take(N * Hkv)
		}
	}
	scale := 1 / math.Sqrt(float64(D))
	ldq, ldk := Hq*D, Hkv*D
	nw := workers(B * Hkv)
	bs := min(attnBlock, Tn)
	blk := bs * Tn
	nbuf := 1
	if o.back {
		nbuf = 3
	}
	bufs := make([]T, nw*nbuf*blk)
	// per worker: log-mask and dα accumulator (T each), row max and row sum (bs each)
	stats := make([]float64, nw*(2*Tn+2*bs))
	parallelItems(B*Hkv, func(w, item int) {
		b, hk := item/Hkv, item%Hkv
		buf := bufs[w*nbuf*blk : (w+1)*nbuf*blk]
		S := buf[:blk]
		P := S
		var dP []T
		if o.back {
			P, dP = buf[blk:2*blk], buf[2*blk:]
		}
		st := stats[w*(2*Tn+2*bs) : (w+1)*(2*Tn+2*bs)]
		logm, accA, rmax, rsum := st[:Tn], st[Tn:2*Tn], st[2*Tn:2*Tn+bs], st[2*Tn+bs:]
		// logm[j] = log(1 − α_{j+1}): the mask of key j seen from any later query.
		for j := 0; j < Tn; j++ {
			logm[j] = 0
			if s.Masked && j+1 < Tn {
				logm[j] = math.Log1p(-float64(alpha[(b*Tn+j+1)*Hkv+hk]))
			}
		}
		kOff := b*Tn*ldk + hk*D
		if o.back {
			clear(accA)
			for t := 0; t < Tn; t++ {
				r := (b*Tn+t)*ldk + hk*D
				clear(dk[r : r+D])
				clear(dv[r : r+D])
			}
		}
		for h := hk * Gs; h < (hk+1)*Gs; h++ {
			qOff := b*Tn*ldq + h*D
			for i0 := 0; i0 < Tn; i0 += bs {
				i1 := min(Tn, i0+bs)
				r, n := i1-i0, i1 // query rows i0..i1-1 against keys 0..i1-1
				qb := qOff + i0*ldq
				localGemm(false, true, r, n, D, scale, q[qb:], ldq, k[kOff:], ldk, 0, S, Tn)
				for i := i0; i < i1; i++ {
					srow, prow := S[(i-i0)*Tn:(i-i0)*Tn+n], P[(i-i0)*Tn:(i-i0)*Tn+n]
					m := float64(srow[i])
					for j := 0; j < i; j++ {
						m = max(m, float64(srow[j])+logm[j])
					}
					var sum float64
					for j := 0; j < i; j++ {
						e := math.Exp(float64(srow[j]) + logm[j] - m)
						prow[j] = T(e)
						sum += e
					}
					e := math.Exp(float64(srow[i]) - m)
					prow[i] = T(e)
					sum += e
					inv := 1 / sum
					for j := 0; j <= i; j++ {
						prow[j] = T(float64(prow[j]) * inv)
					}
					clear(prow[i+1:])
					rmax[i-i0], rsum[i-i0] = m, sum
				}
				if !o.back {
					localGemm(false, false, r, D, n, 1, P, Tn, v[kOff:], ldk, 0, out[qb:], ldq)
					continue
				}
				localGemm(false, true, r, n, D, 1, dO[qb:], ldq, v[kOff:], ldk, 0, dP, Tn)
				for i := i0; i < i1; i++ {
					o := (i - i0) * Tn
					srow, prow, drow := S[o:o+n], P[o:o+n], dP[o:o+n]
					var delta float64
					for j := 0; j <= i; j++ {
						delta += float64(prow[j]) * float64(drow[j])
					}
					if s.Masked && i > 0 {
						// ∂P_ij/∂α_{j+1} through log(1−α) is −e^{s_ij − m_i}/L_i (no division by 1−α).
						mi, li := rmax[i-i0], rsum[i-i0]
						for j := 0; j < i; j++ {
							if math.IsInf(logm[j], -1) {
								continue // see alphaGradExpCap
							}
							ex := math.Exp(min(float64(srow[j])-mi, alphaGradExpCap)) / li
							accA[j+1] -= ex * (float64(drow[j]) - delta)
						}
					}
					for j := 0; j <= i; j++ {
						drow[j] = T(float64(prow[j]) * (float64(drow[j]) - delta))
					}
					clear(drow[i+1:])
				}
				localGemm(false, false, r, D, n, scale, dP, Tn, k[kOff:], ldk, 0, dq[qb:], ldq)
				localGemm(true, false, n, D, r, scale, dP, Tn, q[qb:], ldq, 1, dk[kOff:], ldk)
				localGemm(true, false, n, D, r, 1, P, Tn, dO[qb:], ldq, 1, dv[kOff:], ldk)
			}
		}
		if o.back && s.Masked {
			for t := 0; t < Tn; t++ {
				dA[(b*Tn+t)*Hkv+hk] = T(accA[t])
			}
		}
	})
}
