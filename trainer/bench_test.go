package trainer

import (
	"testing"
)

func BenchmarkAdamWUpdate1M(b *testing.B) {
	const n = 1 << 20
	params := []Param{{Name: "w", Shape: []int{1024, 1024}, Value: make([]float32, n)}}
	grads := [][]float32{make([]float32, n)}
	for i := range grads[0] {
		grads[0][i] = float32(i%13) - 6
	}
	opt := NewAdamW(params, 0.9, 0.95, 1e-8, 0.1, nil)
	b.SetBytes(4 * n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		opt.Update(params, grads, 1e-3)
	}
}

// BenchmarkCheckpointSave4M writes 4M parameters (16 MB of weights, 32 MB of moments) with
// fsyncs on the real filesystem.
func BenchmarkCheckpointSave4M(b *testing.B) {
	const n = 4 << 20
	params := []Param{{Name: "w", Shape: []int{2048, 2048}, Value: make([]float32, n), Grad: make([]float32, n)}}
	opt := NewAdamW(params, 0.9, 0.95, 1e-8, 0.1, nil)
	s := &CheckpointStore{FS: OSFS{}, Dir: b.TempDir(), Keep: 1}
	b.SetBytes(3 * 4 * n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Save(SaveInput{State: TrainState{Step: i + 1}, Params: params, Opt: opt, Recipe: []byte("name: b\n"), ModelConfig: []byte("{}")}); err != nil {
			b.Fatal(err)
		}
	}
}
