//go:build race

package checkpoints

// raceEnabled: the race detector makes sync.Pool drop items, so allocation counts are off.
const raceEnabled = true
