package kerneltest

import (
	"fmt"

	"github.com/dmc-project/dmc/model"
)

// Precision is the arithmetic a backend promises.
type Precision int

const (
	// FP32 backends compute and store in float32.
	FP32 Precision = iota
	// BF16 backends store operands (KV cache, GEMM inputs) as bfloat16 and accumulate in float32.
	BF16
)

// Tolerance is the largest relative error ‖out−ref‖/‖ref‖ the suite accepts at p.
func (p Precision) Tolerance() float64 {
	if p == BF16 {
		return 1e-2
	}
	return 1e-4
}

// Heads describes the attention geometry of one layer.
type Heads struct {
	NHeads, NKVHeads, HeadDim int
	RoPE                      model.RoPELayout
	Theta                     float64
}

// Config returns a model.Config with this geometry, for the model package's RoPE helpers.
func (h Heads) Config() model.Config {
	return model.Config{Name: "kerneltest", Dim: h.NHeads * h.HeadDim, HiddenDim: 4, NLayers: 1, NHeads: h.NHeads,
		NKVHeads: h.NKVHeads, VocabSize: 4, MaxSeqLen: 1 << 16, NormEps: 1e-5, RopeTheta: h.Theta, RoPE: h.RoPE}
}

// G is the number of query heads per KV head.
func (h Heads) G() int { return h.NHeads / h.NKVHeads }

func (h Heads) String() string {
	return fmt.Sprintf("Hq%d_Hkv%d_D%d_%s", h.NHeads, h.NKVHeads, h.HeadDim, h.RoPE)
}

// CacheMode selects how new keys/values enter the cache.
type CacheMode int

const (
	// Vanilla appends every token (compression rate 1, the unmodified model).
	Vanilla CacheMode = iota
	// DMC decides per (sequence, KV head) to append or merge (dmc-spec.md §4).
	DMC
)

func (m CacheMode) String() string {
	if m == DMC {
		return "dmc"
	}
	return "vanilla"
}

// AttnProblem is one decode attention call: B queries (one token each), every (b, KV head)
// with its own number of cached slots.
type AttnProblem struct {
	Heads
	B    int
	Q    []float32   // [B][NHeads*D], already rotated
	Keys [][]float32 // [B*NKVHeads] -> n*D rotated keys
	Vals [][]float32 // [B*NKVHeads] -> n*D values
}

// CacheProblem feeds T tokens of B sequences through one layer's cache and attention.
type CacheProblem struct {
	Heads
	Mode    CacheMode
	Window  int // DMC window W (0 = unbounded running average)
	Channel int // decision/importance channel (D-1 in the reference)
	// ForceCR > 0 replaces the learned decisions by a new slot every ForceCR positions (the
	// benchmark mode of dmc.ForcedCR).
	ForceCR int
	B, T    int
	// Q is [B][T][NHeads*D], K and V are [B][T][NKVHeads*D], all before RoPE.
	Q, K, V []float32
	// Prefill asks the backend to ingest all T tokens at once (parallel prefill) instead of
	// token by token (decode).
	Prefill bool
}

// CacheResult is what a backend produced for a CacheProblem.
type CacheResult struct {
	// Out is the attention output of every token's queries against the cache right after that
	// token was inserted: [B][T][NHeads*D].
	Out []float32
	// Keys and Vals are the final slots of each (b, KV head), index b*NKVHeads+h: n*D values,
	// keys rotated.
	Keys, Vals [][]float32
}

// Backend is an implementation of the inference kernels under test. Output slices are
// provided by the suite, pre-filled with NaN; a backend must write every element.
type Backend interface {
	Name() string
	Precision() Precision
	// RMSNorm writes x/rms(x)·w for every row of len(w) of x.
	RMSNorm(out, x, w []float32, eps float64) error
	// RoPE writes x rotated: x holds len(pos) rows of NHeads*HeadDim values, row r at pos[r].
	RoPE(h Heads, out, x []float32, pos []int) error
	// SwiGLU writes silu(gate)·up element-wise.
	SwiGLU(out, gate, up []float32) error
	// Attention writes softmax(q·K/√D)·V per query head (GQA: head i reads KV head i/G).
	Attention(p AttnProblem, out []float32) error
	// Cache runs p and returns the attention outputs (written into res.Out) and final slots.
	Cache(p CacheProblem, res *CacheResult) error
}
