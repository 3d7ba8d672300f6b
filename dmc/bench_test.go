package dmc_test

import (
	"fmt"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// BenchmarkDecodeStep times one decode step of the bench-20m preset (random weights, float32)
// after a 384-token prefill, with the vanilla cache and with DMC at FORCED per-head rates (the
// weights are not retrofitted; the rates are imposed to measure cost, not learned).
func BenchmarkDecodeStep(b *testing.B) {
	mc, err := model.Preset("bench-20m")
	if err != nil {
		b.Fatal(err)
	}
	p, err := model.RandomParams[float32](mc, 1)
	if err != nil {
		b.Fatal(err)
	}
	m := model.New(p)
	const prefill = 384
	tokens := make([]int, prefill)
	for i := range tokens {
		tokens[i] = (31 * i) % mc.VocabSize
	}
	type resetter interface {
		model.KVCache[float32]
		Reset()
	}
	caches := []struct {
		name  string
		cache resetter
	}{{"vanilla", model.NewVanillaCache[float32](mc)}}
	for _, cr := range []float64{1, 2, 4, 8} {
		c, err := dmc.NewCompressedCache[float32](mc, dmc.DefaultConfig(),
			dmc.WithForcedDecisions(dmc.ForcedCR(func(int, int) float64 { return cr })))
		if err != nil {
			b.Fatal(err)
		}
		caches = append(caches, struct {
			name  string
			cache resetter
		}{fmt.Sprintf("dmc-forced-cr%g", cr), c})
	}
	for _, tc := range caches {
		b.Run(tc.name, func(b *testing.B) {
			pos := mc.MaxSeqLen
			for b.Loop() {
				if pos == mc.MaxSeqLen {
					b.StopTimer()
					tc.cache.Reset()
					if _, err := m.Forward(tc.cache, tokens, 0, false); err != nil {
						b.Fatal(err)
					}
					pos = prefill
					b.StartTimer()
				}
				if _, err := m.Forward(tc.cache, []int{pos % mc.VocabSize}, pos, false); err != nil {
					b.Fatal(err)
				}
				pos++
			}
		})
	}
}

// BenchmarkCachePut times the DMC update of one token for every KV head of one layer (Llama 2
// 7B head shape: 32 KV heads of 128 channels), against the vanilla append.
func BenchmarkCachePut(b *testing.B) {
	mc, err := model.Preset("llama2-7b")
	if err != nil {
		b.Fatal(err)
	}
	mc.NLayers = 1
	q, k, v := make([]float32, mc.QDim()), make([]float32, mc.KVDim()), make([]float32, mc.KVDim())
	for i := range q {
		q[i] = float32(i%13) / 13
	}
	for i := range k {
		k[i], v[i] = float32(i%7)/7, float32(i%5)/5
	}
	run := func(b *testing.B, c interface {
		model.KVCache[float32]
		Reset()
	}) {
		pos := 0
		for b.Loop() {
			if pos == 4096 {
				c.Reset()
				pos = 0
			}
			c.Put(0, pos, q, k, v)
			pos++
		}
	}
	b.Run("vanilla", func(b *testing.B) { run(b, model.NewVanillaCache[float32](mc)) })
	b.Run("dmc-w12-cr4", func(b *testing.B) {
		c, _ := dmc.NewCompressedCache[float32](mc, dmc.DefaultConfig(),
			dmc.WithForcedDecisions(dmc.ForcedCR(func(int, int) float64 { return 4 })))
		run(b, c)
	})
}
