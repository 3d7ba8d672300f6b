package retrofit

import (
	"fmt"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
)

// Cache is the KV cache chosen for a model: its name and, for "dmc", the DMC settings. It is
// decided once (Model.Cache) and gives every executor its cache.
type Cache struct {
	Name string      // "vanilla" or "dmc"
	DMC  *dmc.Config // nil for vanilla
}

// CacheKinds are the values of --cache.
const CacheKinds = "auto, vanilla or dmc"

// ChooseCache picks the cache of kind ("auto": DMC for DMC models; "vanilla"; "dmc": the
// model's DMC settings, or the reference defaults for a model that has none) for a model
// whose DMC settings are dc (nil = vanilla model).
func ChooseCache(kind string, dc *dmc.Config) (Cache, error) {
	switch kind {
	case "auto":
		if dc == nil {
			return Cache{Name: "vanilla"}, nil
		}
		c := *dc
		return Cache{Name: "dmc", DMC: &c}, nil
	case "vanilla":
		return Cache{Name: "vanilla"}, nil
	case "dmc":
		c := dmc.DefaultConfig()
		if dc != nil {
			c = *dc
		}
		return Cache{Name: "dmc", DMC: &c}, nil
	}
	return Cache{}, fmt.Errorf("unknown --cache %q: use %s", kind, CacheKinds)
}

// Cache picks the model's cache of kind (see ChooseCache).
func (m *Model) Cache(kind string) (Cache, error) { return ChooseCache(kind, m.DMC) }

// Factory makes one fresh CPU cache per sequence.
func (c Cache) Factory(cfg model.Config) eval.CacheFactory {
	if c.DMC == nil {
		return eval.VanillaCaches(cfg)
	}
	return eval.DMCCaches(cfg, *c.DMC)
}

// Kernels sets the cache of the CUDA engine's options.
func (c Cache) Kernels(opt kernels.Options) kernels.Options {
	opt.DMC = nil
	if c.DMC != nil {
		opt = opt.WithDMC(*c.DMC)
	}
	return opt
}

// Describe says what a CPU cache holds ("vanilla", or "DMC, N slots, compression X").
func Describe(c model.KVCache[float32]) string {
	if cc, ok := c.(*dmc.CompressedCache[float32]); ok {
		return fmt.Sprintf("DMC, %d slots, compression %.2fx", cc.TotalSlots(), cc.CR())
	}
	return "vanilla"
}
