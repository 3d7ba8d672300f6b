package dmc

import (
	"math"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// tinyConfig is a model shape for unit tests: D = dim/heads, G = heads/kv.
func tinyConfig(dim, heads, kv, layers int, layout model.RoPELayout) model.Config {
	return model.Config{Name: "tiny", Dim: dim, HiddenDim: 8, NLayers: layers, NHeads: heads, NKVHeads: kv,
		VocabSize: 8, MaxSeqLen: 1024, NormEps: 1e-5, RopeTheta: 10000, RoPE: layout}
}

func TestEpsilon(t *testing.T) {
	if got, want := Epsilon[float32](), float64(math.Nextafter32(1, 2)-1); got != want {
		t.Fatalf("Epsilon[float32] = %g, want %g", got, want)
	}
	if got, want := Epsilon[float64](), math.Nextafter(1, 2)-1; got != want {
		t.Fatalf("Epsilon[float64] = %g, want %g", got, want)
	}
}

func TestSigmoid(t *testing.T) {
	for _, x := range []float64{-800, -50, -5, -1e-3, 0, 1e-3, 5, 50, 800} {
		got := Sigmoid(x)
		want := 0.5 * (1 + math.Tanh(x/2)) // an independent formula
		if math.IsNaN(got) || math.Abs(got-want) > 1e-15 {
			t.Fatalf("Sigmoid(%g) = %g, want %g", x, got, want)
		}
	}
}

// TestGatesGQA checks the decision logit per KV head, the importance as the sigmoid of the
// group mean of q[ch] (G = 2 here), and the zeroing of the channel in every q and k head.
func TestGatesGQA(t *testing.T) {
	mc := tinyConfig(16, 4, 2, 1, model.RoPEInterleaved) // D = 4, G = 2
	for _, channel := range []int{-1, 0} {
		cfg := DefaultConfig()
		cfg.DecisionChannel = channel
		ch := cfg.Channel(4)
		const n = 2
		q := make([]float64, n*16)
		k := make([]float64, n*8)
		for i := range q {
			q[i] = float64(i%7) - 3 + 0.25*float64(i)
		}
		for i := range k {
			k[i] = 4 + 0.3*float64(i)
		}
		q0, k0 := append([]float64(nil), q...), append([]float64(nil), k...)
		logit, omega := make([]float64, 2*n), make([]float64, 2*n)
		Gates(mc, cfg, q, k, logit, omega)
		for t0 := 0; t0 < n; t0++ {
			for h := 0; h < 2; h++ {
				wantA := k0[t0*8+h*4+ch] - 5
				mean := (q0[t0*16+(2*h)*4+ch] + q0[t0*16+(2*h+1)*4+ch]) / 2
				wantW := 1/(1+math.Exp(-(mean+5))) + 0x1p-52
				if got := logit[h*n+t0]; got != wantA {
					t.Fatalf("ch %d t %d head %d: logit %g, want %g", ch, t0, h, got, wantA)
				}
				if got := omega[h*n+t0]; math.Abs(got-wantW) > 1e-15 {
					t.Fatalf("ch %d t %d head %d: omega %g, want %g", ch, t0, h, got, wantW)
				}
			}
		}
		for i := range q {
			want := q0[i]
			if i%4 == ch {
				want = 0
			}
			if q[i] != want {
				t.Fatalf("ch %d: q[%d] = %g after Gates, want %g", ch, i, q[i], want)
			}
		}
		for i := range k {
			want := k0[i]
			if i%4 == ch {
				want = 0
			}
			if k[i] != want {
				t.Fatalf("ch %d: k[%d] = %g after Gates, want %g", ch, i, k[i], want)
			}
		}
	}
}

// TestGatesFloat32Epsilon: the importance floor is the epsilon of the compute type.
func TestGatesFloat32Epsilon(t *testing.T) {
	mc := tinyConfig(4, 1, 1, 1, model.RoPEHalf)
	q := []float32{0, 0, 0, -1000} // σ(−995) underflows to 0: ω = ε
	k := []float32{0, 0, 0, 0}
	logit, omega := make([]float64, 1), make([]float64, 1)
	Gates(mc, DefaultConfig(), q, k, logit, omega)
	if omega[0] != 0x1p-23 || logit[0] != -5 {
		t.Fatalf("omega %g logit %g, want 2^-23 and -5", omega[0], logit[0])
	}
}

func TestDecisions(t *testing.T) {
	logit := []float64{3, -1, 0, 2, 1e-9 /* head 1 */, -4, 0.5, -0.5, 7, -7}
	alpha := make([]float64, len(logit))
	HardDecisions(logit, 5, alpha)
	want := []float64{0, 0, 0, 1, 1, 0, 1, 0, 1, 0} // position 0 of each head always appends
	for i := range want {
		if alpha[i] != want[i] {
			t.Fatalf("hard alpha = %v, want %v", alpha, want)
		}
	}
	soft := make([]float64, len(logit))
	SoftDecisions(logit, nil, 5, 0.1, soft)
	for i, a := range logit {
		w := 0.0
		if i%5 != 0 {
			w = Sigmoid(a / 0.1)
		}
		if soft[i] != w {
			t.Fatalf("soft[%d] = %g, want %g", i, soft[i], w)
		}
		// Without noise the straight-through value is the inference decision.
		if StraightThrough(soft[i]) != alpha[i] {
			t.Fatalf("straight-through of %g = %g, hard decision %g", soft[i], StraightThrough(soft[i]), alpha[i])
		}
	}
	noise := []float64{9, 9, 9, -2, 0, 0, 0, 1, 0, 8}
	SoftDecisions(logit, noise, 5, 0.1, soft)
	if soft[0] != 0 || soft[3] != Sigmoid(0) || soft[7] != Sigmoid(5) || soft[9] != Sigmoid(10) {
		t.Fatalf("noisy soft decisions %v", soft)
	}
}

func TestScaleChannel(t *testing.T) {
	mc := tinyConfig(8, 2, 1, 1, model.RoPEHalf) // D = 4
	q := []float32{1, 2, 3, 4, 5, 6, 7, 8}
	k := []float32{1, 2, 3, 4}
	ScaleChannel(mc, DefaultConfig(), q, k, ZeroOutFactor(100, 250))
	wantQ := []float32{1, 2, 3, 2, 5, 6, 7, 4}
	wantK := []float32{1, 2, 3, 2}
	for i := range q {
		if q[i] != wantQ[i] {
			t.Fatalf("q = %v, want %v", q, wantQ)
		}
	}
	for i := range k {
		if k[i] != wantK[i] {
			t.Fatalf("k = %v, want %v", k, wantK)
		}
	}
}
