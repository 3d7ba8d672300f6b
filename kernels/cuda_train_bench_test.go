//go:build dmc_cuda

package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkAttention times the training attention kernels alone at the shape of the 953M
// benchmark model's layers (8 sequences of 2048 tokens, 16 heads of 128) and at head
// dimension 64 with GQA, with and without the DMC mask, and reports TFLOP/s of the causal
// products (forward 2·2·T²/2·D per head and sequence, backward 2.5× that).
//
//	go test -tags dmc_cuda -run '^$' -bench Attention ./kernels
func BenchmarkAttention(b *testing.B) {
	dev, err := OpenTrain(0)
	if err != nil {
		b.Skipf("no CUDA device: %v", err)
	}
	shapes := []struct {
		name string
		B    int
		g    AttnGeom
	}{
		{"953m", 8, AttnGeom{QHeads: 16, KVHeads: 16, HeadD: 128, SeqLen: 2048, TensorCores: true}},
		{"d64-gqa", 8, AttnGeom{QHeads: 12, KVHeads: 4, HeadD: 64, SeqLen: 2048, TensorCores: true}},
	}
	for _, s := range shapes {
		g, rows := s.g, s.B*s.g.SeqLen
		rng := rand.New(rand.NewPCG(3, 4))
		buf := func(n int, scale float32) *DevBuf {
			h := make([]float32, n)
			for i := range h {
				h[i] = scale * float32(rng.NormFloat64())
			}
			d, err := dev.FromF32(h)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(d.Free)
			return d
		}
		qn, kn := rows*g.QHeads*g.HeadD, rows*g.KVHeads*g.HeadD
		q, k, v, dO := buf(qn, 1), buf(kn, 1), buf(kn, 1), buf(qn, 1)
		o, stats, dq, dk, dv := buf(qn, 0), buf(2*rows*g.QHeads, 0), buf(qn, 0), buf(kn, 0), buf(kn, 0)
		alphaHost := make([]float32, rows*g.KVHeads)
		for i := range alphaHost {
			alphaHost[i] = rng.Float32() * 0.9
		}
		alpha, err := dev.FromF32(alphaHost)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(alpha.Free)
		dA := buf(rows*g.KVHeads, 0)
		flops := 2 * 2 * float64(g.SeqLen) * float64(g.SeqLen) / 2 * float64(g.HeadD) * float64(g.QHeads*s.B)
		for _, masked := range []bool{false, true} {
			var al, da *DevBuf
			if masked {
				al, da = alpha, dA
			}
			name := fmt.Sprintf("%s/masked=%v", s.name, masked)
			run := func(b *testing.B, pass string, f func() error, fl float64) {
				b.Run(name+"/"+pass, func(b *testing.B) {
					if err := f(); err != nil { // warm-up: loads the kernel, allocates scratch
						b.Fatal(err)
					}
					if err := dev.Sync(); err != nil {
						b.Fatal(err)
					}
					b.ResetTimer()
					start := time.Now()
					for i := 0; i < b.N; i++ {
						if err := f(); err != nil {
							b.Fatal(err)
						}
					}
					if err := dev.Sync(); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(fl*float64(b.N)/time.Since(start).Seconds()/1e12, "TFLOP/s")
				})
			}
			run(b, "forward-rows32", func() error {
				dev.Attn32Rows = true
				defer func() { dev.Attn32Rows = false }()
				return dev.AttentionForward(o, stats, q, k, v, al, g, rows)
			}, flops)
			run(b, "forward", func() error { return dev.AttentionForward(o, stats, q, k, v, al, g, rows) }, flops)
			run(b, "backward", func() error {
				return dev.AttentionBackward(dq, dk, dv, da, q, k, v, al, o, stats, dO, g, rows)
			}, 2.5*flops)
		}
	}
}
