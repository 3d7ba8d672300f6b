package trainer

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
)

// fakeModel is a tiny model with hand-written gradients that exercises every field of
// StepContext:
//
//	h_t     = emb[x_t] ⊙ norm                      (norm: a 1-D "norm" weight, not decayed)
//	h'_t    = h_t with channel E−1 (the "decision channel") scaled by ZeroOut, or removed when DMC
//	          is on (as the real DMC graph does)
//	LM      = mean_t −log softmax(out·h'_t)[y_t]
//	α_t     = σ(gate·h_t + noise_t)                 (noise from Seed when DMC and not Hard)
//	CR      = mean_b max(0, TargetAlpha − mean_t α_t)
//	Loss    = LM + CRWeight·CR                      (CR terms only when DMC)
//
// It computes in float64 and stores float32 gradients. nanAt makes Step return a NaN loss at
// that step; onStep is called before every Step (tests cancel contexts from it).
type fakeModel struct {
	V, E    int
	emb     Param // [V, E]
	norm    Param // [E]
	out     Param // [V, E]
	gate    Param // [E]
	noNoise bool
	nanAt   int
	onStep  func(sc StepContext)
	calls   []StepContext
}

func newFakeModel(V, E int, seed uint64) *fakeModel {
	m := &fakeModel{V: V, E: E, nanAt: -1}
	mk := func(name string, shape ...int) Param {
		n := 1
		for _, s := range shape {
			n *= s
		}
		return Param{Name: name, Shape: shape, Value: make([]float32, n), Grad: make([]float32, n)}
	}
	m.emb, m.norm, m.out, m.gate = mk("emb.weight", V, E), mk("norm.weight", E), mk("out.weight", V, E), mk("gate", E)
	s := seed
	for _, p := range []Param{m.emb, m.out, m.gate} {
		for i := range p.Value {
			s = splitmix64(s)
			p.Value[i] = float32(float64(s>>11)/(1<<53)-0.5) * 0.5
		}
	}
	for i := range m.norm.Value {
		m.norm.Value[i] = 1
	}
	return m
}

func (m *fakeModel) Params() []Param { return []Param{m.emb, m.norm, m.out, m.gate} }

func (m *fakeModel) Step(b Batch, sc StepContext) (Losses, error) {
	m.calls = append(m.calls, sc)
	if m.onStep != nil {
		m.onStep(sc)
	}
	l, g := m.eval(b, sc, true)
	if sc.Step == m.nanAt {
		l.Loss = math.NaN()
	}
	for i, p := range m.Params() {
		for j := range p.Grad {
			p.Grad[j] = float32(g[i][j])
		}
	}
	return l, nil
}

func (m *fakeModel) Forward(b Batch, sc StepContext) (Losses, error) {
	l, _ := m.eval(b, sc, false)
	return l, nil
}

func (m *fakeModel) noise(seed uint64, t int) float64 {
	u := (float64(splitmix64(seed^uint64(t)*0x9e3779b97f4a7c15)>>11) + 0.5) / (1 << 53)
	return math.Log(u / (1 - u)) // logistic = difference of two Gumbels
}

// eval returns the losses and (if grad) float64 gradients for emb, norm, out, gate.
func (m *fakeModel) eval(b Batch, sc StepContext, grad bool) (Losses, [][]float64) {
	V, E := m.V, m.E
	emb, norm, out, gate := f64(m.emb.Value), f64(m.norm.Value), f64(m.out.Value), f64(m.gate.Value)
	g := [][]float64{make([]float64, V*E), make([]float64, E), make([]float64, V*E), make([]float64, E)}
	N := len(b.Inputs)
	h, hp, logits := make([]float64, E), make([]float64, E), make([]float64, V)
	var lm, cr, alphaSum float64
	dh := make([]float64, E)
	for bi := 0; bi < b.BatchSize; bi++ {
		alphas := make([]float64, b.SeqLen)
		hs := make([][]float64, b.SeqLen)
		for ti := 0; ti < b.SeqLen; ti++ {
			t := bi*b.SeqLen + ti
			x, y := b.Inputs[t], b.Targets[t]
			for e := 0; e < E; e++ {
				h[e] = emb[x*E+e] * norm[e]
				hp[e] = h[e]
			}
			keep := sc.ZeroOut
			if sc.DMC {
				keep = 0
			}
			hp[E-1] *= keep
			mx := math.Inf(-1)
			for v := 0; v < V; v++ {
				logits[v] = dot(out[v*E:(v+1)*E], hp)
				mx = math.Max(mx, logits[v])
			}
			var z float64
			for v := range logits {
				z += math.Exp(logits[v] - mx)
			}
			lm += (mx + math.Log(z) - logits[y]) / float64(N)
			if grad {
				for e := range dh {
					dh[e] = 0
				}
				for v := 0; v < V; v++ {
					d := math.Exp(logits[v]-mx) / z
					if v == y {
						d--
					}
					d /= float64(N)
					for e := 0; e < E; e++ {
						g[2][v*E+e] += d * hp[e]
						dh[e] += d * out[v*E+e]
					}
				}
				dh[E-1] *= keep
				m.backH(g, x, emb, norm, dh)
			}
			if sc.DMC {
				a := dot(gate, h)
				if !sc.Hard && !m.noNoise {
					a += m.noise(sc.Seed, t)
				}
				alphas[ti] = 1 / (1 + math.Exp(-a))
				hs[ti] = append([]float64(nil), h...)
			}
		}
		if !sc.DMC {
			continue
		}
		var mean float64
		for _, a := range alphas {
			mean += a
		}
		mean /= float64(b.SeqLen)
		alphaSum += mean
		if gap := sc.TargetAlpha - mean; gap > 0 {
			cr += gap / float64(b.BatchSize)
			if grad {
				for ti, a := range alphas {
					t := bi*b.SeqLen + ti
					d := -sc.CRWeight / float64(b.BatchSize) / float64(b.SeqLen) * a * (1 - a)
					for e := 0; e < E; e++ {
						g[3][e] += d * hs[ti][e]
						dh[e] = d * gate[e]
					}
					m.backH(g, b.Inputs[t], emb, norm, dh)
				}
			}
		}
	}
	l := Losses{LM: lm, Tokens: N}
	if sc.DMC {
		l.CR = cr
		l.MeanAlpha = alphaSum / float64(b.BatchSize)
	}
	l.Loss = l.LM + sc.CRWeight*l.CR
	return l, g
}

func (m *fakeModel) backH(g [][]float64, x int, emb, norm, dh []float64) {
	E := m.E
	for e := 0; e < E; e++ {
		g[0][x*E+e] += dh[e] * norm[e]
		g[1][e] += dh[e] * emb[x*E+e]
	}
}

func f64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

func dot(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// fakeSource yields windows of seqLen+1 tokens of a noisy affine Markov chain; window k is a
// pure function of k, so the position is just the next k. limit > 0 ends the data (io.EOF).
type fakeSource struct {
	V, SeqLen int
	k, limit  int
	buf       []int
}

func (s *fakeSource) Next() ([]int, error) {
	if s.limit > 0 && s.k >= s.limit {
		return nil, io.EOF
	}
	if s.buf == nil {
		s.buf = make([]int, s.SeqLen+1)
	}
	h := splitmix64(uint64(s.k) + 12345)
	cur := int(h % uint64(s.V))
	for i := range s.buf {
		s.buf[i] = cur
		h = splitmix64(h)
		if h%10 == 0 {
			cur = int((h >> 8) % uint64(s.V))
		} else {
			cur = (3*cur + 1) % s.V
		}
	}
	s.k++
	return s.buf, nil
}

func (s *fakeSource) Position() json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"window":%d}`, s.k))
}

func (s *fakeSource) Seek(p json.RawMessage) error {
	var v struct {
		Window *int `json:"window"`
	}
	if err := json.Unmarshal(p, &v); err != nil || v.Window == nil {
		return fmt.Errorf("bad position %s", p)
	}
	s.k = *v.Window
	return nil
}
