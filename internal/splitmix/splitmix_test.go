package splitmix

import "testing"

// The reference outputs of SplitMix64 seeded with 1234567 (from the published C code).
func TestReferenceSequence(t *testing.T) {
	state := uint64(1234567)
	want := []uint64{6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821}
	for i, w := range want {
		if got := Next(&state); got != w {
			t.Fatalf("output %d: got %d, want %d", i, got, w)
		}
	}
}
