package model

import (
	"fmt"
	"math"
)

// Model is the pure-Go reference forward of a Llama model: exact, parallel over cores, and the
// oracle every other executor is checked against.
type Model[T Float] struct {
	P    *Params[T]
	Cfg  Config
	RoPE *RoPE
}

// New wraps parameters for inference. It panics on shape bugs; loaders validate user input first.
func New[T Float](p *Params[T]) *Model[T] {
	if err := p.CheckShapes(); err != nil {
		panic(err)
	}
	return &Model[T]{P: p, Cfg: p.Config, RoPE: NewRoPE(p.Config)}
}

// RMSNorm writes x / rms(x) · w into out for every row of width len(w).
func RMSNorm[T Float](out, x, w []T, eps float64) {
	d := len(w)
	for r := 0; r+d <= len(x); r += d {
		var ss float64
		for _, v := range x[r : r+d] {
			ss += float64(v) * float64(v)
		}
		scale := T(1 / math.Sqrt(ss/float64(d)+eps))
		for i := 0; i < d; i++ {
			out[r+i] = x[r+i] * scale * w[i]
		}
	}
}

// SiLU is x·σ(x).
func SiLU[T Float](x T) T { return x / (1 + T(math.Exp(-float64(x)))) }

// Forward runs tokens at positions startPos, startPos+1, ... through the model, feeding the
// cache, and returns the logits: [len(tokens), Vocab] when allLogits, else only the last row.
// Prefill batches the projections over all tokens; attention is taken token by token against
// the cache, so a batched prefill is exactly the same computation as repeated one-token decode.
func (m *Model[T]) Forward(cache KVCache[T], tokens []int, startPos int, allLogits bool) ([]T, error) {
	c := m.Cfg
	n := len(tokens)
	if n == 0 {
		return nil, fmt.Errorf("forward: no tokens")
	}
	if startPos+n > c.MaxSeqLen {
		return nil, fmt.Errorf("forward: positions up to %d exceed the model's max_seq_len %d", startPos+n, c.MaxSeqLen)
	}
	d, D, hd := c.Dim, c.HeadDim(), c.HiddenDim
	qd, kvd := c.QDim(), c.KVDim()
	x := make([]T, n*d)
	for t, tok := range tokens {
		if tok < 0 || tok >= c.VocabSize {
			return nil, fmt.Errorf("forward: token id %d at index %d is outside the vocabulary [0, %d)", tok, t, c.VocabSize)
		}
		copy(x[t*d:(t+1)*d], m.P.Embed[tok*d:(tok+1)*d])
	}
	xn := make([]T, n*d)
	q, k, v := make([]T, n*qd), make([]T, n*kvd), make([]T, n*kvd)
	att := make([]T, n*qd)
	o := make([]T, n*d)
	h1, h3 := make([]T, n*hd), make([]T, n*hd)
	for li := range m.P.Layers {
		L := &m.P.Layers[li]
		RMSNorm(xn, x, L.AttnNorm, c.NormEps)
		MatMulT(q, xn, L.Wq, n, d, qd)
		MatMulT(k, xn, L.Wk, n, d, kvd)
		MatMulT(v, xn, L.Wv, n, d, kvd)
		for t := 0; t < n; t++ {
			qt := q[t*qd : (t+1)*qd]
			cache.Put(li, startPos+t, qt, k[t*kvd:(t+1)*kvd], v[t*kvd:(t+1)*kvd])
			Rotate(m.RoPE, qt, startPos+t)
			m.attend(cache, li, qt, att[t*qd:(t+1)*qd])
		}
		MatMulT(o, att, L.Wo, n, qd, d)
		for i := range x {
			x[i] += o[i]
		}
		RMSNorm(xn, x, L.FFNNorm, c.NormEps)
		MatMulT(h1, xn, L.W1, n, d, hd)
		MatMulT(h3, xn, L.W3, n, d, hd)
		for i := range h1 {
			h1[i] = SiLU(h1[i]) * h3[i]
		}
		MatMulT(o, h1, L.W2, n, hd, d)
		for i := range x {
			x[i] += o[i]
		}
		_ = D
	}
	rows := n
	if !allLogits {
		x = x[(n-1)*d:]
		xn = xn[:d]
		rows = 1
	}
	RMSNorm(xn, x, m.P.FinalNorm, c.NormEps)
	logits := make([]T, rows*c.VocabSize)
	MatMulT(logits, xn, m.P.Output, rows, d, c.VocabSize)
	return logits, nil
}

// attend computes softmax(q·K/√D)·V per query head against its KV head's slots.
func (m *Model[T]) attend(cache KVCache[T], layer int, q, out []T) {
	c := m.Cfg
	D, G := c.HeadDim(), c.GroupSize()
	scale := 1 / math.Sqrt(float64(D))
	parallelFor(c.NHeads, 1<<12, func(lo, hi int) {
		var scores []float64
		for h := lo; h < hi; h++ {
			keys, values, ns := cache.Slots(layer, h/G)
			qh := q[h*D : (h+1)*D]
			if cap(scores) < ns {
				scores = make([]float64, ns)
			}
			scores = scores[:ns]
			maxS := math.Inf(-1)
			for j := 0; j < ns; j++ {
				s := float64(Dot(qh, keys[j*D:(j+1)*D])) * scale
				scores[j] = s
				maxS = max(maxS, s)
			}
			var sum float64
			for j := range scores {
				scores[j] = math.Exp(scores[j] - maxS)
				sum += scores[j]
			}
			oh := out[h*D : (h+1)*D]
			acc := make([]float64, D)
			for j := 0; j < ns; j++ {
				w := scores[j] / sum
				for i, vv := range values[j*D : (j+1)*D] {
					acc[i] += w * float64(vv)
				}
			}
			for i := range oh {
				oh[i] = T(acc[i])
			}
		}
	})
}
