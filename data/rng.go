package data

import (
	"math/bits"

	"github.com/dmc-project/dmc/internal/splitmix"
)

// splitMix is a tiny deterministic generator (SplitMix64). It is ours rather than math/rand
// so that shuffles and splits stay bit-identical across Go releases: a saved Position must
// resume to the same document order on any toolchain.
type splitMix struct{ state uint64 }

func newSplitMix(seeds ...uint64) *splitMix {
	r := &splitMix{state: 0x2545f4914f6cdd1d}
	for _, s := range seeds {
		r.state ^= s
		r.state = r.next()
	}
	return r
}

func (r *splitMix) next() uint64 { return splitmix.Next(&r.state) }

// intn returns a uniform integer in [0, n) (Lemire's multiply-and-reject, unbiased).
func (r *splitMix) intn(n int) int {
	if n <= 0 {
		panic("data: intn with n <= 0")
	}
	bound := uint64(n)
	hi, lo := bits.Mul64(r.next(), bound)
	if lo < bound {
		threshold := -bound % bound
		for lo < threshold {
			hi, lo = bits.Mul64(r.next(), bound)
		}
	}
	return int(hi)
}

// float64 returns a uniform float in [0, 1) with 53 random bits.
func (r *splitMix) float64() float64 { return float64(r.next()>>11) / (1 << 53) }

// perm returns a Fisher-Yates permutation of 0..n-1.
func (r *splitMix) perm(n int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32(i)
	}
	for i := n - 1; i > 0; i-- {
		j := r.intn(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}
