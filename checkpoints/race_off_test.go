//go:build !race

package checkpoints

const raceEnabled = false
