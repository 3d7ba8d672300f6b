// Package splitmix is SplitMix64 (Steele, Lea and Flood 2014), the one counter-based mixer of
// dmc: the data shuffles, the trainer's step seeds and the Gumbel noise keys all use it, so
// they stay bit-identical across Go releases and machines.
package splitmix

// Golden is the generator's increment, 2^64/φ.
const Golden = 0x9e3779b97f4a7c15

// Mix is the SplitMix64 finaliser.
func Mix(z uint64) uint64 {
	z ^= z >> 30
	z *= 0xbf58476d1ce4e5b9
	z ^= z >> 27
	z *= 0x94d049bb133111eb
	return z ^ z>>31
}

// Next advances *state by Golden and returns the mixed value: one step of the generator.
func Next(state *uint64) uint64 {
	*state += Golden
	return Mix(*state)
}
