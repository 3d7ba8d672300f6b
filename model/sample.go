package model

import (
	"math"
	"math/rand/v2"
	"sort"
)

// Sampler picks the next token from logits: greedy at temperature 0, otherwise softmax sampling
// at the given temperature, optionally restricted to the top-p nucleus.
type Sampler struct {
	Temperature float64
	TopP        float64 // 0 or ≥1 disables nucleus sampling
	rng         *rand.Rand
	probs       []float64
	order       []int
}

// NewSampler makes a sampler whose random draws are deterministic in seed.
func NewSampler(temperature, topP float64, seed uint64) *Sampler {
	return &Sampler{Temperature: temperature, TopP: topP, rng: rand.New(rand.NewPCG(seed, 0xda3e39cb94b95bdb))}
}

// Argmax returns the index of the largest value (the first one on ties).
func Argmax[T Float](x []T) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// Sample draws a token id from logits.
func Sample[T Float](s *Sampler, logits []T) int {
	if s.Temperature <= 0 {
		return Argmax(logits)
	}
	n := len(logits)
	if cap(s.probs) < n {
		s.probs, s.order = make([]float64, n), make([]int, n)
	}
	p := s.probs[:n]
	maxL := float64(logits[Argmax(logits)])
	var sum float64
	for i, l := range logits {
		p[i] = math.Exp((float64(l) - maxL) / s.Temperature)
		sum += p[i]
	}
	for i := range p {
		p[i] /= sum
	}
	r := s.rng.Float64()
	if s.TopP <= 0 || s.TopP >= 1 {
		var c float64
		for i, pi := range p {
			c += pi
			if r < c {
				return i
			}
		}
		return n - 1
	}
	order := s.order[:n]
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
	var mass float64
	cut := n
	for i, id := range order {
		mass += p[id]
		if mass >= s.TopP {
			cut = i + 1
			break
		}
	}
	r *= mass
	var c float64
	for _, id := range order[:cut] {
		c += p[id]
		if r < c {
			return id
		}
	}
	return order[cut-1]
}
