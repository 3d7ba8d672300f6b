package model

import (
	"testing"
)

// stories260KConfig is the shape of the real stories260K model (weights are random here).
var stories260KConfig = Config{Name: "stories260K-shape", Dim: 64, HiddenDim: 172, NLayers: 5, NHeads: 8, NKVHeads: 4,
	VocabSize: 512, MaxSeqLen: 512, NormEps: 1e-5, RopeTheta: 10000, RoPE: RoPEInterleaved, TieEmbeddings: true}

// BenchmarkDecode measures one-token decode (tokens/s) after a 128-token prompt, float32.
func BenchmarkDecode(b *testing.B) {
	bench20m, err := Preset("bench-20m")
	if err != nil {
		b.Fatal(err)
	}
	for _, cfg := range []Config{stories260KConfig, bench20m} {
		b.Run(cfg.Name, func(b *testing.B) {
			p, err := RandomParams[float32](cfg, 1)
			if err != nil {
				b.Fatal(err)
			}
			m := New(p)
			prompt := make([]int, 128)
			for i := range prompt {
				prompt[i] = (i * 31) % cfg.VocabSize
			}
			cache := NewVanillaCache[float32](cfg)
			if _, err := m.Forward(cache, prompt, 0, false); err != nil {
				b.Fatal(err)
			}
			pos := len(prompt)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if pos == cfg.MaxSeqLen {
					b.StopTimer()
					cache.Reset()
					m.Forward(cache, prompt, 0, false)
					pos = len(prompt)
					b.StartTimer()
				}
				if _, err := m.Forward(cache, []int{i % cfg.VocabSize}, pos, false); err != nil {
					b.Fatal(err)
				}
				pos++
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tok/s")
			b.ReportMetric(float64(cfg.NumParams())/1e6, "Mparams")
		})
	}
}

// BenchmarkPrefill measures a 256-token prompt (tokens/s), float32.
func BenchmarkPrefill(b *testing.B) {
	cfg, err := Preset("bench-20m")
	if err != nil {
		b.Fatal(err)
	}
	p, _ := RandomParams[float32](cfg, 1)
	m := New(p)
	prompt := make([]int, 256)
	for i := range prompt {
		prompt[i] = (i * 31) % cfg.VocabSize
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Forward(NewVanillaCache[float32](cfg), prompt, 0, false); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(prompt))/b.Elapsed().Seconds(), "tok/s")
}
