package checkpoints

import (
	"path/filepath"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// BenchmarkSafetensorsRead measures conversion throughput of one large tensor read from disk
// (the page cache, after the first iteration) into float32.
func BenchmarkSafetensorsRead(b *testing.B) {
	const n = 16 << 20 // 16 Mi elements
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(i%4096) * 0.001
	}
	for _, dt := range []DType{F32, F16, BF16} {
		b.Run(string(dt), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "t.safetensors")
			if err := WriteSafetensors(path, []model.Tensor[float32]{{Name: "t", Shape: []int{n}, Data: data}}, dt, nil); err != nil {
				b.Fatal(err)
			}
			f, err := OpenSafetensors(path)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			dst := make([]float32, n)
			b.SetBytes(int64(n * dt.Size()))
			b.ResetTimer()
			for range b.N {
				if err := f.ReadFloat32("t", dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLoadHF loads a whole bf16 Hugging Face directory of the bench-20m preset.
func BenchmarkLoadHF(b *testing.B) {
	cfg, err := model.Preset("bench-20m")
	if err != nil {
		b.Skip(err)
	}
	w, err := model.RandomParams[float32](cfg, 1)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := WriteHF(dir, w, "bf16", nil, 0); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(cfg.NumParams() * 2)
	b.ResetTimer()
	for range b.N {
		if _, err := LoadHF(dir); err != nil {
			b.Fatal(err)
		}
	}
}
