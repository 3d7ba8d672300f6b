package trainer

import (
	"math"
	"testing"
)

// refAdamW is the textbook AdamW in float64.
func refAdamW(w, g, m, v []float64, t int, lr, b1, b2, eps, wd float64) {
	for j := range w {
		w[j] -= lr * wd * w[j]
		m[j] = b1*m[j] + (1-b1)*g[j]
		v[j] = b2*v[j] + (1-b2)*g[j]*g[j]
		mh := m[j] / (1 - math.Pow(b1, float64(t)))
		vh := v[j] / (1 - math.Pow(b2, float64(t)))
		w[j] -= lr * mh / (math.Sqrt(vh) + eps)
	}
}

func TestAdamWMatchesFloat64Reference(t *testing.T) {
	const b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1
	params := []Param{
		{Name: "layers.0.attn.wq", Shape: []int{2, 3}, Value: []float32{0.5, -0.25, 1, 0.1, -2, 0.3}},
		{Name: "layers.0.attn_norm.weight", Shape: []int{3}, Value: []float32{1, 0.9, 1.1}},
	}
	opt := NewAdamW(params, b1, b2, eps, wd, nil)
	if !opt.Decay[0] || opt.Decay[1] {
		t.Fatalf("default decay mask = %v, want [true false] (matrices decay, norm vectors do not)", opt.Decay)
	}
	ref := make([][]float64, len(params))
	rm := make([][]float64, len(params))
	rv := make([][]float64, len(params))
	for i, p := range params {
		ref[i] = f64(p.Value)
		rm[i] = make([]float64, len(p.Value))
		rv[i] = make([]float64, len(p.Value))
	}
	grads := [][]float32{make([]float32, 6), make([]float32, 3)}
	for step := 1; step <= 6; step++ {
		lr := 1e-2 * float64(step) // a schedule changing every step
		for i := range grads {
			for j := range grads[i] {
				// gradients of mixed signs and magnitudes, one exactly zero
				grads[i][j] = float32(math.Sin(float64(step*7+i*3+j)) * math.Pow(10, float64(j%3-1)))
			}
		}
		grads[0][2] = 0
		opt.Update(params, grads, lr)
		for i := range params {
			w := 0.0
			if opt.Decay[i] {
				w = wd
			}
			refAdamW(ref[i], f64(grads[i]), rm[i], rv[i], step, lr, b1, b2, eps, w)
			for j, got := range params[i].Value {
				if d := math.Abs(float64(got) - ref[i][j]); d > 1e-6*math.Max(1, math.Abs(ref[i][j])) {
					t.Fatalf("step %d %s[%d] = %.9g, float64 reference %.9g", step, params[i].Name, j, got, ref[i][j])
				}
			}
		}
	}
	// First step of Adam moves every element with a nonzero gradient by ≈ lr·sign(g).
	p := []Param{{Name: "w", Shape: []int{1, 2}, Value: []float32{0, 0}}}
	o := NewAdamW(p, b1, b2, eps, 0, nil)
	o.Update(p, [][]float32{{3, -1e-3}}, 0.5)
	if math.Abs(float64(p[0].Value[0])+0.5) > 1e-6 || math.Abs(float64(p[0].Value[1])-0.5) > 1e-4 {
		t.Fatalf("first step = %v, want ≈ [-0.5 0.5]", p[0].Value)
	}
}

func TestAdamWUpdateDoesNotAllocate(t *testing.T) {
	params := []Param{{Name: "w", Shape: []int{64, 64}, Value: make([]float32, 64*64)}}
	grads := [][]float32{make([]float32, 64*64)}
	for i := range grads[0] {
		grads[0][i] = float32(i%7) - 3
	}
	opt := NewAdamW(params, 0.9, 0.95, 1e-8, 0.1, nil)
	if a := testing.AllocsPerRun(10, func() { opt.Update(params, grads, 1e-3) }); a != 0 {
		t.Fatalf("AdamW.Update allocates %v times per call, want 0", a)
	}
}

func TestClipGlobalNorm(t *testing.T) {
	tests := []struct {
		name     string
		grads    [][]float32
		max      float64
		wantNorm float64
		want     [][]float32
	}{
		{"clipped", [][]float32{{3}, {4}}, 1, 5, [][]float32{{0.6}, {0.8}}},
		{"under the limit", [][]float32{{0.3}, {0.4}}, 1, 0.5, [][]float32{{0.3}, {0.4}}},
		{"disabled", [][]float32{{30}, {40}}, 0, 50, [][]float32{{30}, {40}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := ClipGlobalNorm(tc.grads, tc.max)
			if math.Abs(n-tc.wantNorm) > 1e-6 {
				t.Fatalf("reported norm %v, want the pre-clip norm %v", n, tc.wantNorm)
			}
			for i := range tc.want {
				for j := range tc.want[i] {
					if math.Abs(float64(tc.grads[i][j]-tc.want[i][j])) > 1e-6 {
						t.Fatalf("grads = %v, want %v", tc.grads, tc.want)
					}
				}
			}
		})
	}
}
