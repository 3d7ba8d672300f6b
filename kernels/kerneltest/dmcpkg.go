package kerneltest

import (
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// DMCPackage is the CPU reference built from the project's own inference pieces: package
// model's vanilla cache, RoPE and norms, and package dmc's CompressedCache (the cache the CPU
// `dmc generate` uses). Its Cache results are what the CUDA engine must reproduce.
type DMCPackage struct{ CPU }

func (DMCPackage) Name() string { return "cpu-dmc-package" }

func (DMCPackage) Cache(p CacheProblem, res *CacheResult) error {
	mc := p.Config()
	mc.MaxSeqLen = max(mc.MaxSeqLen, p.T)
	qd, kvd, D := p.NHeads*p.HeadDim, p.NKVHeads*p.HeadDim, p.HeadDim
	rope := model.NewRoPE(mc)
	for b := 0; b < p.B; b++ {
		var cache model.KVCache[float32]
		if p.Mode == DMC {
			cfg := dmc.DefaultConfig()
			cfg.Window, cfg.DecisionChannel = p.Window, p.Channel
			var opts []dmc.CacheOption
			if p.ForceCR > 0 {
				cr := float64(p.ForceCR)
				opts = append(opts, dmc.WithForcedDecisions(dmc.ForcedCR(func(int, int) float64 { return cr })))
			}
			c, err := dmc.NewCompressedCache[float32](mc, cfg, opts...)
			if err != nil {
				return err
			}
			cache = c
		} else {
			cache = model.NewVanillaCache[float32](mc)
		}
		for t := 0; t < p.T; t++ {
			row := b*p.T + t
			q := append([]float32(nil), p.Q[row*qd:(row+1)*qd]...)
			k := append([]float32(nil), p.K[row*kvd:(row+1)*kvd]...)
			v := append([]float32(nil), p.V[row*kvd:(row+1)*kvd]...)
			cache.Put(0, t, q, k, v)
			model.Rotate(rope, q, t)
			for i := 0; i < p.NHeads; i++ {
				keys, vals, _ := cache.Slots(0, i/p.G())
				attendOne(q[i*D:(i+1)*D], keys, vals, res.Out[row*qd+i*D:row*qd+(i+1)*D])
			}
		}
		for h := 0; h < p.NKVHeads; h++ {
			keys, vals, _ := cache.Slots(0, h)
			res.Keys = append(res.Keys, append([]float32(nil), keys...))
			res.Vals = append(res.Vals, append([]float32(nil), vals...))
		}
	}
	return nil
}
