package kernels

import (
	"errors"
	"fmt"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// ErrNoCUDA is returned by every entry point of a binary built without the cuda tag.
var ErrNoCUDA = errors.New("this dmc binary was built without CUDA support; rebuild with `make build-cuda` " +
	"(needs the CUDA toolkit: kernels/install-cuda-toolkit.sh) or use --device cpu")

// Options configure an Engine.
type Options struct {
	// DMC selects the compressed cache update (dmc-spec.md §4) with these settings (window,
	// decision channel, offsets: the recipe's, which an export's dmc block carries); nil is the
	// vanilla cache.
	DMC *dmc.Config
	// ForceCR (DMC only) replaces the learned decisions by a fixed per-head merge pattern: a
	// new slot every ForceCR tokens, phase-shifted by head. For throughput benchmarks with
	// random weights; results must be labelled as forced.
	ForceCR int
	// MaxBatch is the number of sequences that can be active at once.
	MaxBatch int
	// MaxContext is the number of positions per sequence (0 = the model's max_seq_len).
	MaxContext int
	// KVPoolBytes fixes the size of the KV page pool (0 = the free GPU memory left after
	// everything else, less a reserve).
	KVPoolBytes int64
	// PrefillTokens is the number of prompt tokens processed per prefill chunk (0 = max(4096,
	// MaxContext)).
	PrefillTokens int
	// Device is the GPU ordinal.
	Device int
}

// DefaultOptions are the reference settings: vanilla cache, one sequence.
func DefaultOptions() Options { return Options{MaxBatch: 1} }

// WithDMC returns o with the DMC cache of settings c (a copy).
func (o Options) WithDMC(c dmc.Config) Options {
	o.DMC = &c
	return o
}

// Engine runs a model on the GPU. It is a model.Decoder (the loop generate, eval, bench and
// serve share), plus what only a GPU has. It is not safe for concurrent use.
type Engine interface {
	// Config is the model served.
	Config() model.Config
	// Prefill, Decode, Release and LogProbs are model.Decoder's: Prefill processes each
	// prompt in parallel over its tokens; Release returns the sequences' pages to the pool.
	model.Decoder
	// Memory describes the GPU memory the engine holds.
	Memory() Memory
	// CacheStats reads the cache occupancy of the active sequences.
	CacheStats() (CacheStats, error)
	// RowSlots reads the slots sequence id holds per (layer, KV head) row (model.SlotCounter).
	RowSlots(id int) ([]int, error)
	// DecodeScore is Decode returning the log-probability of given next tokens, computed on the
	// GPU (model.TargetScorer).
	DecodeScore(ids, tokens, targets []int) ([]int, []float64, error)
	// Device names the GPU, driver and cuBLAS in use.
	Device() string
	// Close frees the GPU memory.
	Close() error
}

// Memory is the engine's GPU memory by purpose, in bytes.
type Memory struct {
	Weights, KVPool, DMCState, BlockTables, Scratch int64
	PageTokens, Pages                               int
	PageBytes                                       int64
	DeviceTotal, DeviceFree                         int64 // at engine creation, before allocation
}

// Total is everything the engine allocated.
func (m Memory) Total() int64 { return m.Weights + m.KVPool + m.DMCState + m.BlockTables + m.Scratch }

// CacheStats is the occupancy of the KV pool.
type CacheStats struct {
	Sequences   int
	Tokens      int64 // tokens ingested, summed over (layer, sequence, KV head) rows
	Slots       int64 // slots held, summed over rows
	PagesUsed   int
	PagesTotal  int
	PageTokens  int
	Unallocated int // pages taken but holding no slot (should be 0)
}

// CR is the real compression rate tokens/slots.
func (s CacheStats) CR() float64 {
	if s.Slots == 0 {
		return 0
	}
	return float64(s.Tokens) / float64(s.Slots)
}

// PageWaste is the fraction of the used pages' capacity that holds no slot.
func (s CacheStats) PageWaste() float64 {
	if s.PagesUsed == 0 {
		return 0
	}
	return 1 - float64(s.Slots)/float64(s.PagesUsed*s.PageTokens)
}

func (o Options) validate(cfg model.Config) (Options, error) {
	if err := cfg.Validate(); err != nil {
		return o, err
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1
	}
	if o.MaxContext <= 0 {
		o.MaxContext = cfg.MaxSeqLen
	}
	if o.PrefillTokens <= 0 {
		o.PrefillTokens = max(4096, o.MaxContext)
	}
	if o.PrefillTokens < o.MaxContext {
		o.PrefillTokens = o.MaxContext
	}
	D := cfg.HeadDim()
	switch {
	case D%8 != 0 || D > 256 || D&(D-1) != 0:
		return o, fmt.Errorf("head dim %d is not supported by the CUDA kernels (8, 16, 32, 64, 128 or 256)", D)
	case cfg.GroupSize() > 8 || cfg.GroupSize()&(cfg.GroupSize()-1) != 0:
		return o, fmt.Errorf("GQA group size %d is not supported by the CUDA kernels (1, 2, 4 or 8)", cfg.GroupSize())
	case o.ForceCR < 0 || (o.ForceCR > 0 && o.DMC == nil):
		return o, fmt.Errorf("forced compression rate %d needs the DMC cache", o.ForceCR)
	}
	if o.DMC != nil {
		c := *o.DMC // resolved copy: the caller's config is left as it is
		if err := c.Validate(); err != nil {
			return o, err
		}
		if err := c.CheckHeadDim(D); err != nil {
			return o, err
		}
		c.DecisionChannel = c.Channel(D)
		o.DMC = &c
	}
	return o, nil
}
