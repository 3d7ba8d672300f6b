package model

import "math"

// RoPE holds the rotation frequencies of one head dimension in one of the two channel layouts.
type RoPE struct {
	Layout RoPELayout
	D      int
	freqs  []float64 // D/2 frequencies theta^(-2i/D)
}

// NewRoPE makes the rotary embedding of cfg.
func NewRoPE(cfg Config) *RoPE {
	D := cfg.HeadDim()
	r := &RoPE{Layout: cfg.RoPE, D: D, freqs: make([]float64, D/2)}
	for i := range r.freqs {
		r.freqs[i] = math.Pow(cfg.RopeTheta, -float64(2*i)/float64(D))
	}
	return r
}

// Pair returns the two channels rotated together as pair i (0 ≤ i < D/2).
func (r *RoPE) Pair(i int) (a, b int) {
	if r.Layout == RoPEInterleaved {
		return 2 * i, 2*i + 1
	}
	return i, i + r.D/2
}

// Partner returns the channel rotated together with channel c.
func (r *RoPE) Partner(c int) int {
	if r.Layout == RoPEInterleaved {
		return c ^ 1
	}
	if c < r.D/2 {
		return c + r.D/2
	}
	return c - r.D/2
}

// Angle is the rotation angle of pair i at position pos.
func (r *RoPE) Angle(i, pos int) float64 { return float64(pos) * r.freqs[i] }

// Rotate applies RoPE at position pos to every head vector packed in x (len a multiple of D).
// The angles are computed in float64 so the float32 and float64 paths agree to rounding.
func Rotate[T Float](r *RoPE, x []T, pos int) {
	D := r.D
	for i := 0; i < D/2; i++ {
		s, c := math.Sincos(r.Angle(i, pos))
		a, b := r.Pair(i)
		for h := 0; h+D <= len(x); h += D {
			x0, x1 := float64(x[h+a]), float64(x[h+b])
			x[h+a] = T(x0*c - x1*s)
			x[h+b] = T(x0*s + x1*c)
		}
	}
}
