package dmc

import (
	"math"
	"unsafe"

	"github.com/dmc-project/dmc/model"
)

// Sigmoid is σ(x) = 1/(1+e^-x), evaluated without overflow for large |x|.
func Sigmoid(x float64) float64 {
	if x >= 0 {
		return 1 / (1 + math.Exp(-x))
	}
	e := math.Exp(x)
	return e / (1 + e)
}

// Epsilon is the machine epsilon of T (2^-23 for float32, 2^-52 for float64): the ε added to
// every importance so that the weight sum Z of a slot never reaches 0.
func Epsilon[T model.Float]() float64 {
	var z T
	if unsafe.Sizeof(z) == 4 {
		return 0x1p-23
	}
	return 0x1p-52
}

// Gates computes, for n tokens, the decision logit and the importance of every KV head, then
// zeroes the decision channel of every query and key head in place so that the channel takes no
// part in attention. q is [n, NHeads·D] and k is [n, NKVHeads·D], both before RoPE. logit and
// omega receive [NKVHeads·n] values, head-major (index h·n + t):
//
//	a_t = k_t[ch] − DecisionOffset
//	ω_t = σ(mean_{g in group of h} q_t^g[ch] + ImportanceOffset) + ε(T)
//
// Zeroing before RoPE keeps the channel's value out of its RoPE partner (D-2 with interleaved
// pairs, D/2-1 with rotate-half). It panics on slice-length bugs.
func Gates[T model.Float](mc model.Config, cfg Config, q, k []T, logit, omega []float64) {
	D, G, Hkv := mc.HeadDim(), mc.GroupSize(), mc.NKVHeads
	qd, kvd := mc.QDim(), mc.KVDim()
	n := len(k) / kvd
	if len(q) != n*qd || len(k) != n*kvd || len(logit) != n*Hkv || len(omega) != n*Hkv {
		panic("dmc.Gates: q, k, logit or omega length does not match the model config")
	}
	ch := cfg.Channel(D)
	eps := Epsilon[T]()
	for t := 0; t < n; t++ {
		qt, kt := q[t*qd:(t+1)*qd], k[t*kvd:(t+1)*kvd]
		for h := 0; h < Hkv; h++ {
			logit[h*n+t] = float64(kt[h*D+ch]) - cfg.DecisionOffset
			var sum float64
			for g := h * G; g < (h+1)*G; g++ {
				sum += float64(qt[g*D+ch])
			}
			// Rounded to T once, so the cache's add and its later window subtraction use the
			// very same weight.
			omega[h*n+t] = float64(T(Sigmoid(sum/float64(G)+cfg.ImportanceOffset) + eps))
			kt[h*D+ch] = 0
		}
		for g := 0; g < mc.NHeads; g++ {
			qt[g*D+ch] = 0
		}
	}
}

// HardDecisions sets α_t = 1[a_t > 0] for sequences of n tokens laid out head-major (h·n + t),
// with α_0 = 0: the first token of a sequence always opens a slot, so that 1/(1 − mean α)
// equals tokens/slots exactly.
func HardDecisions(logit []float64, n int, alpha []float64) {
	checkSeq(len(logit), len(alpha), n)
	for i, a := range logit {
		alpha[i] = 0
		if i%n != 0 && a > 0 {
			alpha[i] = 1
		}
	}
}

// SoftDecisions sets the Gumbel-sigmoid relaxation α̃_t = σ((a_t + noise_t)/τ) for sequences of
// n tokens laid out head-major; noise is logistic noise g1 − g2 (see NoiseKey.Fill), or nil for
// the noiseless relaxation. α̃_0 is 0, as in HardDecisions (it has no gradient).
func SoftDecisions(logit, noise []float64, n int, tau float64, alpha []float64) {
	checkSeq(len(logit), len(alpha), n)
	if noise != nil && len(noise) != len(logit) {
		panic("dmc.SoftDecisions: noise and logit lengths differ")
	}
	for i, a := range logit {
		if i%n == 0 {
			alpha[i] = 0
			continue
		}
		if noise != nil {
			a += noise[i]
		}
		alpha[i] = Sigmoid(a / tau)
	}
}

// StraightThrough is the forward value of the straight-through decision
// α_hard = 1[α̃ > 0.5] − stopgrad(α̃) + α̃; its gradient with respect to α̃ is 1.
func StraightThrough(soft float64) float64 {
	if soft > 0.5 {
		return 1
	}
	return 0
}

func checkSeq(nIn, nOut, n int) {
	if n <= 0 || nIn%n != 0 || nIn != nOut {
		panic("dmc: decision slices must hold whole sequences of the given length and match")
	}
}

// ScaleChannel multiplies the decision channel of every q head and k head (n tokens, layouts as
// in Gates) by f in place: the stage-1 "zero-out" of dmc-spec.md §3, with f = ZeroOutFactor.
// During stage 1 no decisions are taken and the scaled channel still takes part in attention.
func ScaleChannel[T model.Float](mc model.Config, cfg Config, q, k []T, f float64) {
	D := mc.HeadDim()
	ch := cfg.Channel(D)
	if len(q)%D != 0 || len(k)%D != 0 {
		panic("dmc.ScaleChannel: q and k must hold whole heads")
	}
	for i := ch; i < len(q); i += D {
		q[i] = T(float64(q[i]) * f)
	}
	for i := ch; i < len(k); i += D {
		k[i] = T(float64(k[i]) * f)
	}
}
