package dmc

import (
	"math"
	"math/rand/v2"
	"testing"
)

// accumulateByDefinition evaluates x̃_i with explicit products c_ij = Π_{m=j+1..i} α_m.
func accumulateByDefinition(x, omega, alpha []float64, D, W int) []float64 {
	n := len(omega)
	out := make([]float64, n*D)
	for i := 0; i < n; i++ {
		lo := 0
		if W > 0 {
			lo = max(0, i-W+1)
		}
		var den float64
		for j := lo; j <= i; j++ {
			c := 1.0
			for m := j + 1; m <= i; m++ {
				c *= alpha[m]
			}
			den += c * omega[j]
			for d := 0; d < D; d++ {
				out[i*D+d] += c * omega[j] * x[j*D+d]
			}
		}
		for d := 0; d < D; d++ {
			out[i*D+d] /= den
		}
	}
	return out
}

func TestPartialAccumulation(t *testing.T) {
	const n, D = 40, 3
	rng := rand.New(rand.NewPCG(5, 5))
	x, omega := make([]float64, n*D), make([]float64, n)
	for i := range x {
		x[i] = rng.NormFloat64()
	}
	for i := range omega {
		omega[i] = 0.01 + rng.Float64()
	}
	soft, hard := make([]float64, n), make([]float64, n)
	for i := 1; i < n; i++ {
		soft[i] = rng.Float64()
		if rng.Float64() < 0.7 {
			hard[i] = 1
		}
	}
	soft[7], soft[8] = 1, 0 // exact endpoints inside a soft sequence
	for _, alpha := range [][]float64{soft, hard} {
		for _, W := range []int{0, 1, 2, 5, 12, 100} {
			got := make([]float64, n*D)
			PartialAccumulation(x, omega, alpha, D, W, got)
			want := accumulateByDefinition(x, omega, alpha, D, W)
			for i := range got {
				if math.Abs(got[i]-want[i]) > 1e-12 {
					t.Fatalf("W=%d element %d: %g, want %g", W, i, got[i], want[i])
				}
			}
		}
	}
	// W = 0 is the unrolled recurrence acc_i = α_i·acc_{i−1} + ω_i·x_i.
	got := make([]float64, n*D)
	PartialAccumulation(x, omega, soft, D, 0, got)
	acc, z := make([]float64, D), 0.0
	for i := 0; i < n; i++ {
		z = soft[i]*z + omega[i]
		for d := range acc {
			acc[d] = soft[i]*acc[d] + omega[i]*x[i*D+d]
			if math.Abs(got[i*D+d]-acc[d]/z) > 1e-12 {
				t.Fatalf("recurrence: element (%d,%d) %g, want %g", i, d, got[i*D+d], acc[d]/z)
			}
		}
	}
}

func TestMask(t *testing.T) {
	alpha := []float64{0, 1, 0.5, 0, 1e-300, 1}
	n := len(alpha)
	m := make([]float64, n*n)
	Mask(alpha, m)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			v := m[i*n+j]
			var want float64
			switch {
			case j == i:
				want = 0
			case j > i:
				want = math.Inf(-1)
			default:
				want = math.Log1p(-alpha[j+1])
			}
			if math.IsNaN(v) || v != want {
				t.Fatalf("M[%d,%d] = %g, want %g", i, j, v, want)
			}
			// On hard decisions the relaxed mask is the evaluation mask, without NaN from −∞·0.
			if a := alpha[min(j+1, n-1)]; (a == 0 || a == 1) && j < i {
				if h := HardMaskValue(alpha, i, j); h != v {
					t.Fatalf("hard M[%d,%d] = %g, relaxed %g", i, j, h, v)
				}
			}
		}
	}
	if !math.IsInf(m[2*n+0], -1) || m[3*n+1] != math.Log(0.5) || m[4*n+2] != 0 {
		t.Fatalf("mask rows %v", m)
	}
}

// TestParallelAttentionHardEndpoints: soft decisions that are exactly 0 or 1 must give finite
// outputs (−∞ mask entries become weight 0, never NaN).
func TestParallelAttentionHardEndpoints(t *testing.T) {
	mc := tinyConfig(16, 4, 2, 1, "half")
	const n = 9
	rng := rand.New(rand.NewPCG(8, 8))
	q, k, v := make([]float64, n*16), make([]float64, n*8), make([]float64, n*8)
	for i := range q {
		q[i] = 3 * rng.NormFloat64()
	}
	for i := range k {
		k[i], v[i] = 3*rng.NormFloat64(), rng.NormFloat64()
	}
	alpha, omega := make([]float64, 2*n), make([]float64, 2*n)
	for i := range alpha {
		if i%n != 0 {
			alpha[i] = float64(i % 2) // alternating exact 0 and 1
		}
		omega[i] = 0x1p-52 // the smallest importance
	}
	out := make([]float64, n*16)
	ParallelAttention(mc, DefaultConfig(), q, k, v, alpha, omega, out)
	for i, o := range out {
		if math.IsNaN(o) || math.IsInf(o, 0) {
			t.Fatalf("output %d = %g", i, o)
		}
	}
}
