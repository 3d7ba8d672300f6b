package kerneltest

import (
	"math"

	"github.com/dmc-project/dmc/model"
)

// Epsilon is ε of the importance ω = σ(q̄+5)+ε. The CUDA engine computes the DMC update in
// float32, so the references use float32's machine epsilon too.
const Epsilon = 1.1920928955078125e-07

// DecisionOffset is the bias of the decision logit a = k[ch] − 5 and of the importance logit.
const DecisionOffset = 5

// refHead is the compressed cache of one (sequence, KV head), dmc-spec.md §4, in element type T.
type refHead[T model.Float] struct {
	keys, vals []T // n*D rotated keys and values
	sk, sv     []T // running weighted sums (pre-RoPE)
	z          T
	n          int // current merge-segment length
	ringK      [][]T
	ringV      [][]T
	ringW      []T
}

// refCache runs the sequential inference update and decode attention of one layer for B
// sequences: the definition every backend is measured against.
type refCache[T model.Float] struct {
	p     CacheProblem
	rope  *model.RoPE
	heads []refHead[T]
}

func newRefCache[T model.Float](p CacheProblem) *refCache[T] {
	c := &refCache[T]{p: p, rope: model.NewRoPE(p.Config()), heads: make([]refHead[T], p.B*p.NKVHeads)}
	D, W := p.HeadDim, p.Window
	for i := range c.heads {
		h := &c.heads[i]
		h.sk, h.sv = make([]T, D), make([]T, D)
		h.ringK, h.ringV, h.ringW = make([][]T, W), make([][]T, W), make([]T, W)
		for j := 0; j < W; j++ {
			h.ringK[j], h.ringV[j] = make([]T, D), make([]T, D)
		}
	}
	return c
}

// put ingests token pos of sequence b: q [NHeads*D] is rotated in place (and its decision
// channel zeroed in DMC mode), k and v are [NKVHeads*D] pre-RoPE and left untouched.
func (c *refCache[T]) put(b, pos int, q, k, v []T) {
	p := c.p
	D, G, ch := p.HeadDim, p.G(), p.Channel
	for h := 0; h < p.NKVHeads; h++ {
		hd := &c.heads[b*p.NKVHeads+h]
		kh := append([]T(nil), k[h*D:(h+1)*D]...)
		vh := append([]T(nil), v[h*D:(h+1)*D]...)
		if p.Mode == Vanilla {
			model.Rotate(c.rope, kh, pos)
			hd.keys = append(hd.keys, kh...)
			hd.vals = append(hd.vals, vh...)
			continue
		}
		alpha := kh[ch]-DecisionOffset > 0
		if p.ForceCR > 0 {
			alpha = pos%p.ForceCR != 0 // dmc.ForcedCR for an integer rate
		}
		alpha = alpha && len(hd.keys) > 0
		var qm float64
		for g := 0; g < G; g++ {
			qm += float64(q[(h*G+g)*D+ch])
			q[(h*G+g)*D+ch] = 0
		}
		qm /= float64(G)
		w := T(1/(1+math.Exp(-(qm+DecisionOffset))) + Epsilon)
		kh[ch] = 0
		if alpha {
			hd.n++
		} else {
			hd.n = 1
			clear(hd.sk)
			clear(hd.sv)
			hd.z = 0
		}
		W := p.Window
		var slot int
		if W > 0 {
			slot = (hd.n - 1) % W
		}
		for i := 0; i < D; i++ {
			hd.sk[i] += w * kh[i]
			hd.sv[i] += w * vh[i]
			if W > 0 {
				if hd.n > W {
					hd.sk[i] -= hd.ringK[slot][i]
					hd.sv[i] -= hd.ringV[slot][i]
				}
				hd.ringK[slot][i] = w * kh[i]
				hd.ringV[slot][i] = w * vh[i]
			}
		}
		hd.z += w
		if W > 0 {
			if hd.n > W {
				hd.z -= hd.ringW[slot]
			}
			hd.ringW[slot] = w
		}
		sk, sv := make([]T, D), make([]T, D)
		for i := range sk {
			sk[i] = hd.sk[i] / hd.z
			sv[i] = hd.sv[i] / hd.z
		}
		model.Rotate(c.rope, sk, pos) // ch was zeroed before RoPE only, as package dmc does
		if alpha {
			copy(hd.keys[len(hd.keys)-D:], sk)
			copy(hd.vals[len(hd.vals)-D:], sv)
		} else {
			hd.keys = append(hd.keys, sk...)
			hd.vals = append(hd.vals, sv...)
		}
	}
	model.Rotate(c.rope, q, pos)
}

// attend writes softmax(q·K/√D)·V per query head of sequence b against the current slots.
func (c *refCache[T]) attend(b int, q, out []T) {
	p := c.p
	for i := 0; i < p.NHeads; i++ {
		hd := &c.heads[b*p.NKVHeads+i/p.G()]
		attendOne(q[i*p.HeadDim:(i+1)*p.HeadDim], hd.keys, hd.vals, out[i*p.HeadDim:(i+1)*p.HeadDim])
	}
}

// attendOne is single-head attention over n = len(keys)/D slots, accumulated in float64.
func attendOne[T model.Float](q, keys, vals, out []T) {
	D := len(q)
	n := len(keys) / D
	scale := 1 / math.Sqrt(float64(D))
	scores := make([]float64, n)
	mx := math.Inf(-1)
	for j := range scores {
		var s float64
		for i := 0; i < D; i++ {
			s += float64(q[i]) * float64(keys[j*D+i])
		}
		scores[j] = s * scale
		mx = max(mx, scores[j])
	}
	var sum float64
	for j := range scores {
		scores[j] = math.Exp(scores[j] - mx)
		sum += scores[j]
	}
	acc := make([]float64, D)
	for j, s := range scores {
		for i := 0; i < D; i++ {
			acc[i] += s / sum * float64(vals[j*D+i])
		}
	}
	for i := range out {
		out[i] = T(acc[i])
	}
}

// runCache executes p with the reference cache in element type T.
func runCache[T model.Float](p CacheProblem) (out []T, keys, vals [][]T) {
	c := newRefCache[T](p)
	qd, kvd := p.NHeads*p.HeadDim, p.NKVHeads*p.HeadDim
	out = make([]T, p.B*p.T*qd)
	q := make([]T, qd)
	k, v := make([]T, kvd), make([]T, kvd)
	for t := 0; t < p.T; t++ {
		for b := 0; b < p.B; b++ {
			row := b*p.T + t
			for i := range q {
				q[i] = T(p.Q[row*qd+i])
			}
			for i := range k {
				k[i], v[i] = T(p.K[row*kvd+i]), T(p.V[row*kvd+i])
			}
			c.put(b, t, q, k, v)
			c.attend(b, q, out[row*qd:(row+1)*qd])
		}
	}
	for i := range c.heads {
		keys = append(keys, c.heads[i].keys)
		vals = append(vals, c.heads[i].vals)
	}
	return out, keys, vals
}

func toF32[T model.Float](x []T) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

func toF64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// CPU is the pure-Go float32 backend: the model package's RMSNorm, Rotate and SiLU, and the
// sequential DMC update of dmc-spec.md §4. It is the reference the CUDA kernels are held to.
type CPU struct{}

func (CPU) Name() string         { return "cpu-float32" }
func (CPU) Precision() Precision { return FP32 }

func (CPU) RMSNorm(out, x, w []float32, eps float64) error {
	model.RMSNorm(out, x, w, eps)
	return nil
}

func (CPU) RoPE(h Heads, out, x []float32, pos []int) error {
	r := model.NewRoPE(h.Config())
	w := h.NHeads * h.HeadDim
	copy(out, x)
	for i, p := range pos {
		model.Rotate(r, out[i*w:(i+1)*w], p)
	}
	return nil
}

func (CPU) SwiGLU(out, gate, up []float32) error {
	for i := range out {
		out[i] = model.SiLU(gate[i]) * up[i]
	}
	return nil
}

func (CPU) Attention(p AttnProblem, out []float32) error {
	D := p.HeadDim
	for b := 0; b < p.B; b++ {
		for i := 0; i < p.NHeads; i++ {
			kv := b*p.NKVHeads + i/p.G()
			o := (b*p.NHeads + i) * D
			attendOne(p.Q[o:o+D], p.Keys[kv], p.Vals[kv], out[o:o+D])
		}
	}
	return nil
}

func (CPU) Cache(p CacheProblem, res *CacheResult) error {
	out, keys, vals := runCache[float32](p)
	copy(res.Out, out)
	res.Keys, res.Vals = keys, vals
	return nil
}
