package kerneltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// Geometries are the attention shapes every backend must handle: MHA, GQA with G = 2, 4 and 8,
// both RoPE layouts, head dims from stories260K's 8 to Llama's 128.
var Geometries = []Heads{
	{NHeads: 4, NKVHeads: 4, HeadDim: 8, RoPE: model.RoPEInterleaved, Theta: 10000},
	{NHeads: 8, NKVHeads: 4, HeadDim: 8, RoPE: model.RoPEInterleaved, Theta: 10000},
	{NHeads: 8, NKVHeads: 2, HeadDim: 64, RoPE: model.RoPEHalf, Theta: 10000},
	{NHeads: 16, NKVHeads: 2, HeadDim: 64, RoPE: model.RoPEHalf, Theta: 500000},
	{NHeads: 4, NKVHeads: 4, HeadDim: 128, RoPE: model.RoPEHalf, Theta: 10000},
	{NHeads: 4, NKVHeads: 1, HeadDim: 128, RoPE: model.RoPEInterleaved, Theta: 10000},
}

// RelErr is ‖got−want‖/‖want‖; NaN or Inf anywhere in got gives +Inf.
func RelErr(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i, g := range got {
		if math.IsNaN(float64(g)) || math.IsInf(float64(g), 0) {
			return math.Inf(1)
		}
		d := float64(g) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func nanSlice(n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(math.NaN())
	}
	return s
}

func normals(rng *rand.Rand, n int, std float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(rng.NormFloat64() * std)
	}
	return s
}

func check(t *testing.T, b Backend, what string, got []float32, want []float64) {
	t.Helper()
	if e := RelErr(got, want); !(e < b.Precision().Tolerance()) {
		t.Errorf("%s: relative error %.3g exceeds %.0e", what, e, b.Precision().Tolerance())
	}
}

// Run executes the whole conformance suite against b.
func Run(t *testing.T, b Backend) {
	t.Run("RMSNorm", func(t *testing.T) { testRMSNorm(t, b) })
	t.Run("RoPE", func(t *testing.T) { testRoPE(t, b) })
	t.Run("SwiGLU", func(t *testing.T) { testSwiGLU(t, b) })
	t.Run("Attention", func(t *testing.T) { testAttention(t, b) })
	t.Run("Cache", func(t *testing.T) { testCache(t, b) })
}

func testRMSNorm(t *testing.T, b Backend) {
	rng := rand.New(rand.NewPCG(1, uint64(len(b.Name()))))
	for _, sh := range []struct{ rows, d int }{{1, 8}, {3, 64}, {7, 100}, {5, 4096}} {
		x := normals(rng, sh.rows*sh.d, 3)
		w := normals(rng, sh.d, 1)
		out := nanSlice(len(x))
		if err := b.RMSNorm(out, x, w, 1e-5); err != nil {
			t.Fatal(err)
		}
		want := make([]float64, len(x))
		model.RMSNorm(want, toF64(x), toF64(w), 1e-5)
		check(t, b, fmt.Sprintf("rows=%d d=%d", sh.rows, sh.d), out, want)
	}
}

func testRoPE(t *testing.T, b Backend) {
	rng := rand.New(rand.NewPCG(2, 0))
	for _, h := range Geometries {
		pos := []int{0, 1, 17, 4095, 333}
		x := normals(rng, len(pos)*h.NHeads*h.HeadDim, 1)
		out := nanSlice(len(x))
		if err := b.RoPE(h, out, x, pos); err != nil {
			t.Fatal(err)
		}
		want := toF64(x)
		r := model.NewRoPE(h.Config())
		w := h.NHeads * h.HeadDim
		for i, p := range pos {
			model.Rotate(r, want[i*w:(i+1)*w], p)
		}
		check(t, b, h.String(), out, want)
	}
}

func testSwiGLU(t *testing.T, b Backend) {
	rng := rand.New(rand.NewPCG(3, 0))
	for _, n := range []int{1, 173, 3 * 5632} {
		g, u := normals(rng, n, 3), normals(rng, n, 1)
		out := nanSlice(n)
		if err := b.SwiGLU(out, g, u); err != nil {
			t.Fatal(err)
		}
		want := make([]float64, n)
		for i := range want {
			want[i] = model.SiLU(float64(g[i])) * float64(u[i])
		}
		check(t, b, fmt.Sprintf("n=%d", n), out, want)
	}
}

func testAttention(t *testing.T, b Backend) {
	rng := rand.New(rand.NewPCG(4, 0))
	lengths := []int{1, 2, 15, 16, 17, 33, 70, 257}
	for _, h := range Geometries {
		for _, B := range []int{1, 3} {
			p := AttnProblem{Heads: h, B: B, Q: normals(rng, B*h.NHeads*h.HeadDim, 1)}
			for i := 0; i < B*h.NKVHeads; i++ {
				n := lengths[rng.IntN(len(lengths))]
				p.Keys = append(p.Keys, normals(rng, n*h.HeadDim, 1))
				p.Vals = append(p.Vals, normals(rng, n*h.HeadDim, 1))
			}
			out := nanSlice(len(p.Q))
			if err := b.Attention(p, out); err != nil {
				t.Fatal(err)
			}
			want := make([]float64, len(p.Q))
			D := h.HeadDim
			for bb := 0; bb < B; bb++ {
				for i := 0; i < h.NHeads; i++ {
					kv := bb*h.NKVHeads + i/h.G()
					o := (bb*h.NHeads + i) * D
					attendOne(toF64(p.Q[o:o+D]), toF64(p.Keys[kv]), toF64(p.Vals[kv]), want[o:o+D])
				}
			}
			check(t, b, fmt.Sprintf("%s B=%d", h, B), out, want)
		}
	}
}

// NewCacheProblem draws random q, k, v for p's shape. In DMC mode the decision channel of k is
// centred on the decision threshold so that about half the tokens merge, and q's channel
// spreads the importance over (0, 1).
func NewCacheProblem(rng *rand.Rand, h Heads, mode CacheMode, window, B, T int, prefill bool) CacheProblem {
	p := CacheProblem{Heads: h, Mode: mode, Window: window, Channel: h.HeadDim - 1, B: B, T: T, Prefill: prefill}
	D := h.HeadDim
	p.Q = normals(rng, B*T*h.NHeads*D, 1)
	p.K = normals(rng, B*T*h.NKVHeads*D, 1)
	p.V = normals(rng, B*T*h.NKVHeads*D, 1)
	if mode == DMC {
		for i := p.Channel; i < len(p.K); i += D {
			p.K[i] = float32(DecisionOffset + 1.5*rng.NormFloat64())
		}
		for i := p.Channel; i < len(p.Q); i += D {
			p.Q[i] = float32(-DecisionOffset + 3*rng.NormFloat64())
		}
	}
	return p
}

// ReferenceCache is the float64 oracle of a CacheProblem.
func ReferenceCache(p CacheProblem) (out []float64, keys, vals [][]float64) {
	return runCache[float64](p)
}

func testCache(t *testing.T, b Backend) {
	rng := rand.New(rand.NewPCG(5, 0))
	for _, h := range Geometries {
		for _, mode := range []CacheMode{Vanilla, DMC} {
			for _, c := range []struct {
				window, B, T int
				prefill      bool
				forceCR      int
				mergeBias    float64 // shifts the decision logits: 2 gives ~90% merges, segments past W
			}{{12, 1, 1, false, 0, 0}, {12, 3, 37, false, 0, 0}, {0, 2, 29, false, 0, 0}, {12, 2, 70, true, 0, 0}, {0, 1, 33, true, 0, 0},
				{12, 3, 5, true, 0, 0}, {12, 2, 41, false, 4, 0}, {12, 1, 50, true, 8, 0}, {12, 2, 61, false, 20, 0},
				{12, 1, 70, true, 20, 0}, {12, 2, 90, false, 0, 2}, {12, 2, 90, true, 0, 2}, {0, 1, 60, false, 0, 2}} {
				if c.forceCR > 0 && mode == Vanilla {
					continue
				}
				p := NewCacheProblem(rng, h, mode, c.window, c.B, c.T, c.prefill)
				p.ForceCR = c.forceCR
				if mode == DMC {
					for i := p.Channel; i < len(p.K); i += h.HeadDim {
						p.K[i] += float32(c.mergeBias)
					}
				}
				name := fmt.Sprintf("%s/%s/W%d_B%d_T%d_prefill=%v_force=%d_bias=%g", h, mode, c.window, c.B, c.T, c.prefill, c.forceCR, c.mergeBias)
				res := CacheResult{Out: nanSlice(c.B * c.T * h.NHeads * h.HeadDim)}
				if err := b.Cache(p, &res); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				wantOut, wantK, wantV := ReferenceCache(p)
				check(t, b, name+" attention", res.Out, wantOut)
				if len(res.Keys) != len(wantK) || len(res.Vals) != len(wantV) {
					t.Errorf("%s: %d/%d slot lists, want %d", name, len(res.Keys), len(res.Vals), len(wantK))
					continue
				}
				var gotK, gotV []float32
				var refK, refV []float64
				for i := range wantK {
					if len(res.Keys[i]) != len(wantK[i]) || len(res.Vals[i]) != len(wantV[i]) {
						t.Errorf("%s: head %d holds %d slots, want %d", name, i, len(res.Keys[i])/h.HeadDim, len(wantK[i])/h.HeadDim)
						continue
					}
					gotK, gotV = append(gotK, res.Keys[i]...), append(gotV, res.Vals[i]...)
					refK, refV = append(refK, wantK[i]...), append(refV, wantV[i]...)
				}
				check(t, b, name+" keys", gotK, refK)
				check(t, b, name+" values", gotV, refV)
			}
		}
	}
}
