package retrofit

import (
	"fmt"
	"math"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
)

// Cache is the KV cache chosen for a model: its name and, for "dmc", the DMC settings. It is
// decided once (Model.Cache) and gives every executor its cache.
type Cache struct {
	Name  string           // "vanilla", "dmc", or a training-free policy (window, streaming, h2o, tova)
	DMC   *dmc.Config      // nil unless "dmc"
	Evict *dmc.EvictConfig // the policy and its budget; nil unless a policy
}

// CacheKinds are the values of --cache.
const CacheKinds = "auto, vanilla, dmc, or a training-free policy: window, streaming, h2o, tova"

// CacheOptions size the training-free policies: Budget slots per (layer, KV head), or a target
// compression CR, which gives a budget of Context/CR slots (Context: the longest sequence one
// cache holds).
type CacheOptions struct {
	Budget  int
	CR      float64
	Context int
	// Lengths, when given, are the tokens each evaluated sequence puts in one cache: the budget
	// for CR is then solved so that the real compression rate on them matches CR
	// (eval.BudgetForCR), instead of Context/CR.
	Lengths []int
	// Proportional sizes a policy for CR with a budget that grows with each sequence, ⌈t/CR⌉
	// slots after t tokens (dmc.EvictConfig.Ratio), so that sequences of every length are
	// compressed by CR: what benchmark items of a few dozen tokens need.
	Proportional bool
}

// ChooseCache picks the cache of kind ("auto": DMC for DMC models; "vanilla"; "dmc": the
// model's DMC settings, or the reference defaults for a model that has none) for a model
// whose DMC settings are dc (nil = vanilla model).
func ChooseCache(kind string, dc *dmc.Config) (Cache, error) {
	return ChooseCacheWith(kind, dc, CacheOptions{})
}

// ChooseCacheWith is ChooseCache with the training-free policies too (sized by o).
func ChooseCacheWith(kind string, dc *dmc.Config, o CacheOptions) (Cache, error) {
	switch kind {
	case dmc.PolicyWindow, dmc.PolicyStreaming, dmc.PolicyH2O, dmc.PolicyTOVA:
		budget := o.Budget
		if o.CR > 0 && budget == 0 && o.Proportional {
			ec := dmc.EvictConfig{Policy: kind, Ratio: o.CR}
			if err := ec.Validate(); err != nil {
				return Cache{}, err
			}
			return Cache{Name: kind, Evict: &ec}, nil
		}
		switch {
		case budget > 0:
		case o.CR > 0 && len(o.Lengths) > 0:
			if budget = eval.BudgetForCR(o.Lengths, o.CR); budget == 0 {
				return Cache{}, fmt.Errorf("--cr %g is more than a budget of one slot per head reaches on this data", o.CR)
			}
		case o.CR > 0 && o.Context > 0:
			budget = int(math.Ceil(float64(o.Context) / o.CR))
		}
		if budget <= 0 {
			return Cache{}, fmt.Errorf("--cache %s needs a size: --kv-budget N (slots per layer and KV head) or --cr X (a budget of context/X slots)", kind)
		}
		ec := dmc.EvictConfig{Policy: kind, Budget: budget}
		if err := ec.Validate(); err != nil {
			return Cache{}, err
		}
		return Cache{Name: kind, Evict: &ec}, nil
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

// CacheWith picks the model's cache of kind, sizing a training-free policy by o.
func (m *Model) CacheWith(kind string, o CacheOptions) (Cache, error) {
	return ChooseCacheWith(kind, m.DMC, o)
}

// Factory makes one fresh CPU cache per sequence.
func (c Cache) Factory(cfg model.Config) eval.CacheFactory {
	if c.Evict != nil {
		return eval.EvictingCaches(cfg, *c.Evict)
	}
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
	if ec, ok := c.(*dmc.EvictingCache[float32]); ok {
		return ec.Config().String()
	}
	return "vanilla"
}
