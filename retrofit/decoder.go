package retrofit

import (
	"fmt"

	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
)

// Decoder is a model.Decoder on the device a command asked for, with what commands report
// about it.
type Decoder struct {
	model.Decoder
	cpu    *model.CPUDecoder
	engine kernels.Engine
	cache  Cache
}

// NewDecoder runs m with cache on device "cpu" (the pure-Go reference) or "cuda" (the CUDA
// engine, sized for sequences of up to maxContext positions).
func NewDecoder(m *Model, cache Cache, device string, maxContext int) (*Decoder, error) {
	return NewBatchDecoder(m, cache, device, maxContext, 1)
}

// NewBatchDecoder is NewDecoder for up to maxBatch sequences at once on CUDA (the engine sizes
// its block tables and scratch for them; the CPU decoder has no limit).
func NewBatchDecoder(m *Model, cache Cache, device string, maxContext, maxBatch int) (*Decoder, error) {
	cfg := m.Weights.Config
	switch device {
	case "cpu":
		if m.Random != nil {
			return nil, fmt.Errorf("random weights are drawn on the GPU: use --device cuda")
		}
		factory := cache.Factory(cfg)
		cpu := model.NewCPUDecoder(m.Weights, func() (model.KVCache[float32], error) { return factory() })
		return &Decoder{Decoder: cpu, cpu: cpu, cache: cache}, nil
	case "cuda":
		if cache.Evict != nil {
			return nil, fmt.Errorf("the CUDA engine has no %s cache: run training-free policies with --device cpu", cache.Name)
		}
		if err := kernels.Available(); err != nil {
			return nil, err
		}
		opt := cache.Kernels(kernels.DefaultOptions())
		opt.MaxContext = min(cfg.MaxSeqLen, maxContext)
		opt.MaxBatch = max(1, maxBatch)
		var e kernels.Engine
		var err error
		if m.Random != nil {
			if cache.DMC != nil {
				opt.ForceCR = m.Random.ForceCR
			}
			e, err = kernels.NewRandomEngine(cfg, m.Random.Seed, opt)
		} else {
			e, err = kernels.NewEngine(m.Weights, opt)
		}
		if err != nil {
			return nil, err
		}
		return &Decoder{Decoder: e, engine: e, cache: cache}, nil
	}
	return nil, fmt.Errorf("unknown --device %q: use cpu or cuda", device)
}

// Label names the device in report lines ("" on the CPU, "[GPU name] " on CUDA).
func (d *Decoder) Label() string {
	if d.engine != nil {
		return "[" + d.engine.Device() + "] "
	}
	return ""
}

// Describe says what the cache of sequence id holds (on CUDA: of all active sequences).
func (d *Decoder) Describe(id int) (string, error) {
	if d.cpu != nil {
		return Describe(d.cpu.Cache(id)), nil
	}
	if d.cache.DMC == nil {
		return "vanilla", nil
	}
	st, err := d.engine.CacheStats()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("DMC, %d slots, compression %.2fx", st.Slots, st.CR()), nil
}

// Close frees the device memory.
func (d *Decoder) Close() error {
	if d.engine != nil {
		return d.engine.Close()
	}
	return nil
}

// CacheOccupancy reads the KV slots the CUDA engine's running sequences hold and their real
// compression rate; ok is false on the CPU, where each sequence has its own cache.
func (d *Decoder) CacheOccupancy() (slots int64, cr float64, ok bool, err error) {
	if d.engine == nil {
		return 0, 0, false, nil
	}
	st, err := d.engine.CacheStats()
	if err != nil {
		return 0, 0, true, err
	}
	return st.Slots, st.CR(), true, nil
}

// LogProbsShared scores continuations of one prefix, computing the prefix once on the CPU
// (eval/tasks.SharedScorer); on CUDA each continuation is scored whole.
func (d *Decoder) LogProbsShared(prefix []int, rests [][]int) ([][]float64, error) {
	if d.cpu != nil {
		return d.cpu.LogProbsShared(prefix, rests)
	}
	out := make([][]float64, len(rests))
	for i, r := range rests {
		lp, err := model.ContinuationLogProbs(d, prefix, r)
		if err != nil {
			return nil, err
		}
		out[i] = lp
	}
	return out, nil
}

// RowSlots implements model.SlotCounter on either device.
func (d *Decoder) RowSlots(id int) ([]int, error) {
	if d.cpu != nil {
		return d.cpu.RowSlots(id)
	}
	return d.engine.RowSlots(id)
}

// DecodeScore implements model.TargetScorer on either device.
func (d *Decoder) DecodeScore(ids, tokens, targets []int) ([]int, []float64, error) {
	if d.cpu != nil {
		return d.cpu.DecodeScore(ids, tokens, targets)
	}
	return d.engine.DecodeScore(ids, tokens, targets)
}

// KVPool describes the CUDA engine's paged KV pool: its pages, the tokens a page holds and the
// (layer, KV head) rows of a sequence; ok is false on the CPU.
func (d *Decoder) KVPool() (pages int64, pageTokens, rowsPerSeq int, ok bool) {
	if d.engine == nil {
		return 0, 0, 0, false
	}
	mem, cfg := d.engine.Memory(), d.engine.Config()
	return int64(mem.Pages), mem.PageTokens, cfg.NLayers * cfg.NKVHeads, true
}
