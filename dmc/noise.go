package dmc

import (
	"math"

	"github.com/dmc-project/dmc/internal/splitmix"
)

// NoiseKey names one stream of the training noise. The logistic noise of the Gumbel-sigmoid is
// a pure function of the key and an element index, so a resumed run draws exactly what the
// interrupted one would have, whatever order the work is done in.
//
// Derivation (stable: changing it breaks resume of existing runs):
//
//	mix(z)     = SplitMix64 finaliser: z ^= z>>30; z *= 0xbf58476d1ce4e5b9; z ^= z>>27;
//	             z *= 0x94d049bb133111eb; z ^= z>>31
//	γ          = 0x9e3779b97f4a7c15
//	absorb(h,f)= mix(h ^ mix(f + γ))
//	state      = absorb(absorb(absorb(absorb(mix(Seed + γ), Step), Rank), MicroBatch), Layer)
//	x_i        = mix(state + (i+1)·γ)            (the i-th SplitMix64 output from state)
//	u_i        = ((x_i >> 11) + 0.5) · 2^-53      (uniform in the open interval (0, 1))
//	noise_i    = log(u_i) − log1p(−u_i)           (logistic(0,1), distributed as g1 − g2)
//
// Within one (step, rank, micro-batch, layer) the element index is i = (b·NKVHeads + h)·T + t
// for sequence b of the micro-batch, KV head h and position t.
type NoiseKey struct {
	Seed, Step, Rank, MicroBatch, Layer uint64
}

const golden = splitmix.Golden

func mix64(z uint64) uint64 { return splitmix.Mix(z) }

func absorb(h, f uint64) uint64 { return mix64(h ^ mix64(f+golden)) }

// State is the SplitMix64 state the key's elements are drawn from (the derivation above), for
// generators elsewhere (the GPU executor's noise kernel) that must draw the same values.
func (k NoiseKey) State() uint64 { return k.state() }

func (k NoiseKey) state() uint64 {
	h := mix64(k.Seed + golden)
	for _, f := range [...]uint64{k.Step, k.Rank, k.MicroBatch, k.Layer} {
		h = absorb(h, f)
	}
	return h
}

func logisticFrom(state, i uint64) float64 {
	x := mix64(state + (i+1)*golden)
	u := (float64(x>>11) + 0.5) * 0x1p-53
	return math.Log(u) - math.Log1p(-u)
}

// At is the logistic noise of element i.
func (k NoiseKey) At(i uint64) float64 { return logisticFrom(k.state(), i) }

// Fill writes the noise of elements 0..len(out)-1.
func (k NoiseKey) Fill(out []float64) {
	s := k.state()
	for i := range out {
		out[i] = logisticFrom(s, uint64(i))
	}
}
