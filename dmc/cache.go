package dmc

import (
	"fmt"
	"math"
	"slices"

	"github.com/dmc-project/dmc/model"
)

// DecisionFunc decides, in place of the learned decision, whether the token at pos merges into
// the last slot of (layer, kvHead) (true) or opens a new slot (false).
type DecisionFunc func(layer, kvHead, pos int) bool

// Decision is one recorded cache update.
type Decision struct {
	Pos        int     // token position
	Merge      bool    // α_t: merged into the last slot (true) or appended (false)
	Logit      float64 // a_t = k_t[ch] − DecisionOffset (computed even when decisions are forced)
	Importance float64 // ω_t
}

// CacheOption configures a CompressedCache.
type CacheOption func(*cacheOptions)

type cacheOptions struct {
	force  DecisionFunc
	record bool
}

// WithForcedDecisions is FOR BENCHMARKS ONLY: it replaces the model's learned decisions by f,
// so throughput can be measured at a chosen compression rate with weights that were never
// retrofitted (random presets). Results from such a cache must be labelled "forced CR"; the
// cache reports it through Forced. The first token of a sequence is still always appended.
func WithForcedDecisions(f DecisionFunc) CacheOption {
	return func(o *cacheOptions) { o.force = f }
}

// WithDecisionRecord keeps every decision (position, α, logit, importance) per (layer, KV head)
// for tests and analysis; see Decisions. It costs memory linear in the tokens seen.
func WithDecisionRecord() CacheOption {
	return func(o *cacheOptions) { o.record = true }
}

// ForcedCR is a DecisionFunc FOR BENCHMARKS ONLY that gives (layer, kvHead) the compression rate
// cr(layer, kvHead) (values below 1 count as 1): position pos opens a slot exactly when
// ⌊pos/cr⌋ > ⌊(pos−1)/cr⌋, so after N tokens from position 0 the head holds ⌊(N−1)/cr⌋ + 1
// slots (⌈N/cr⌉ for integer cr) and its compression rate tends to cr.
func ForcedCR(cr func(layer, kvHead int) float64) DecisionFunc {
	return func(layer, kvHead, pos int) bool {
		r := max(cr(layer, kvHead), 1)
		if pos == 0 {
			return false
		}
		return math.Floor(float64(pos)/r) == math.Floor(float64(pos-1)/r)
	}
}

// headState is the DMC memory of one (layer, KV head) of one sequence.
type headState[T model.Float] struct {
	keys, values []T       // slots, D values each; keys rotated at their newest token's position
	sk, sv       []float64 // S_k, S_v: ω-weighted sums of the current segment's window (pre-RoPE)
	z            float64   // Z: the sum of their weights
	segLen       int       // n: tokens in the current merge segment
	// ring holds the last W tokens' (k, v, ω), W·(2D+1) values, token c's entry at c mod W.
	// They are stored unmultiplied: ω·k is formed in float64 on add and on subtract alike, so
	// the window subtraction removes exactly what was added.
	ring      []T
	tokens    int // tokens seen
	decisions []Decision
}

// CompressedCache is the DMC KV cache of one sequence (dmc-spec.md §4): every (layer, KV head)
// decides per token whether to append a slot or merge into its last one, so heads hold different
// numbers of slots and memory is proportional to the total slot count. It implements
// model.KVCache; like the forward that drives it, it is not safe for concurrent Put calls.
//
// The running sums S_k, S_v and Z are kept in float64 whatever T is, because the windowed
// update subtracts old terms and would otherwise lose the small weights to cancellation in
// float32; slots and the ring are stored in T.
type CompressedCache[T model.Float] struct {
	mc    model.Config
	cfg   Config
	rope  *model.RoPE
	opts  cacheOptions
	heads []headState[T] // [layer·NKVHeads + h]
	// scratch, reused across Put calls
	logit, omega []float64
	slot         []float64
}

// NewCompressedCache makes an empty DMC cache for a model of configuration mc.
func NewCompressedCache[T model.Float](mc model.Config, cfg Config, opts ...CacheOption) (*CompressedCache[T], error) {
	if err := mc.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := cfg.CheckHeadDim(mc.HeadDim()); err != nil {
		return nil, err
	}
	c := &CompressedCache[T]{
		mc: mc, cfg: cfg, rope: model.NewRoPE(mc),
		heads: make([]headState[T], mc.NLayers*mc.NKVHeads),
		logit: make([]float64, mc.NKVHeads), omega: make([]float64, mc.NKVHeads),
		slot: make([]float64, mc.HeadDim()),
	}
	for _, o := range opts {
		o(&c.opts)
	}
	return c, nil
}

// Config returns the DMC configuration of the cache.
func (c *CompressedCache[T]) Config() Config { return c.cfg }

// Forced reports whether decisions are forced (benchmark mode) rather than learned.
func (c *CompressedCache[T]) Forced() bool { return c.opts.force != nil }

// Put runs the DMC update of every KV head of layer for the token at pos. q ([NHeads·D]) and k
// ([NKVHeads·D]) are pre-RoPE; their decision channel is read and then zeroed in place.
func (c *CompressedCache[T]) Put(layer, pos int, q, k, v []T) {
	mc := c.mc
	D, W := mc.HeadDim(), c.cfg.Window
	if layer < 0 || layer >= mc.NLayers || len(q) != mc.QDim() || len(k) != mc.KVDim() || len(v) != mc.KVDim() {
		panic(fmt.Sprintf("dmc.CompressedCache.Put: layer %d or vector lengths (%d, %d, %d) do not match the model config", layer, len(q), len(k), len(v)))
	}
	Gates(mc, c.cfg, q, k, c.logit, c.omega)
	for h := 0; h < mc.NKVHeads; h++ {
		s := &c.heads[layer*mc.NKVHeads+h]
		if s.sk == nil {
			s.sk, s.sv = make([]float64, D), make([]float64, D)
		}
		merge := c.logit[h] > 0
		if c.opts.force != nil {
			merge = c.opts.force(layer, h, pos)
		}
		if len(s.keys) == 0 {
			merge = false // the first token of a sequence always opens a slot
		}
		if c.opts.record {
			s.decisions = append(s.decisions, Decision{Pos: pos, Merge: merge, Logit: c.logit[h], Importance: c.omega[h]})
		}
		kh, vh := k[h*D:(h+1)*D], v[h*D:(h+1)*D]
		w := c.omega[h] // already rounded to T by Gates
		if merge {
			s.segLen++
			for i := range D {
				s.sk[i] += w * float64(kh[i])
				s.sv[i] += w * float64(vh[i])
			}
			s.z += w
		} else {
			s.segLen = 1
			for i := range D {
				s.sk[i] = w * float64(kh[i])
				s.sv[i] = w * float64(vh[i])
			}
			s.z = w
		}
		if W > 0 {
			if s.ring == nil {
				s.ring = make([]T, W*(2*D+1))
			}
			e := s.ring[(s.tokens%W)*(2*D+1):][:2*D+1]
			if s.segLen > W { // the entry about to be overwritten is the token leaving the window
				ow := float64(e[2*D])
				for i := range D {
					s.sk[i] -= ow * float64(e[i])
					s.sv[i] -= ow * float64(e[D+i])
				}
				s.z -= ow
			}
			copy(e, kh)
			copy(e[D:], vh)
			e[2*D] = T(w)
		}
		s.tokens++
		if !merge { // open a slot; every value is written below
			s.keys = slices.Grow(s.keys, D)[:len(s.keys)+D]
			s.values = slices.Grow(s.values, D)[:len(s.values)+D]
		}
		last := len(s.keys) - D
		for i := range D {
			c.slot[i] = s.sk[i] / s.z
		}
		model.Rotate(c.rope, c.slot, pos) // at the newest merged token's position
		for i := range D {
			s.keys[last+i] = T(c.slot[i])
			s.values[last+i] = T(s.sv[i] / s.z)
		}
	}
}

// Slots returns the rotated keys and the values of (layer, kvHead) as n slots of D values.
func (c *CompressedCache[T]) Slots(layer, kvHead int) ([]T, []T, int) {
	s := &c.heads[layer*c.mc.NKVHeads+kvHead]
	return s.keys, s.values, len(s.keys) / c.mc.HeadDim()
}

// Tokens is the number of tokens (layer, kvHead) has seen.
func (c *CompressedCache[T]) Tokens(layer, kvHead int) int {
	return c.heads[layer*c.mc.NKVHeads+kvHead].tokens
}

// NumSlots is the number of slots (layer, kvHead) holds.
func (c *CompressedCache[T]) NumSlots(layer, kvHead int) int {
	return len(c.heads[layer*c.mc.NKVHeads+kvHead].keys) / c.mc.HeadDim()
}

// TotalSlots is the slot count over all layers and KV heads; the cache's memory is
// TotalSlots·2·D·sizeof(T) bytes plus a fixed per-head window ring.
func (c *CompressedCache[T]) TotalSlots() int {
	n := 0
	for i := range c.heads {
		n += len(c.heads[i].keys)
	}
	return n / c.mc.HeadDim()
}

// ratio is tokens/slots over heads [lo, hi); 1 while nothing is stored.
func (c *CompressedCache[T]) ratio(lo, hi int) float64 {
	var tok, slots int
	for _, s := range c.heads[lo:hi] {
		tok += s.tokens
		slots += len(s.keys)
	}
	if slots == 0 {
		return 1
	}
	return float64(tok) / float64(slots/c.mc.HeadDim())
}

// CR is the real compression rate: tokens seen summed over every (layer, KV head), divided by
// the slots kept summed the same way (1 while empty).
func (c *CompressedCache[T]) CR() float64 { return c.ratio(0, len(c.heads)) }

// LayerCR is the compression rate of one layer, over its KV heads.
func (c *CompressedCache[T]) LayerCR(layer int) float64 {
	h := c.mc.NKVHeads
	return c.ratio(layer*h, (layer+1)*h)
}

// HeadCR is the compression rate of one (layer, KV head).
func (c *CompressedCache[T]) HeadCR(layer, kvHead int) float64 {
	i := layer*c.mc.NKVHeads + kvHead
	return c.ratio(i, i+1)
}

// Decisions returns the recorded decisions of (layer, kvHead) in Put order; nil unless the
// cache was made WithDecisionRecord.
func (c *CompressedCache[T]) Decisions(layer, kvHead int) []Decision {
	return c.heads[layer*c.mc.NKVHeads+kvHead].decisions
}

// Reset empties the cache for a new sequence, keeping its memory.
func (c *CompressedCache[T]) Reset() {
	for i := range c.heads {
		s := &c.heads[i]
		s.keys, s.values, s.decisions = s.keys[:0], s.values[:0], s.decisions[:0]
		s.segLen, s.tokens, s.z = 0, 0, 0
	}
}

var _ model.KVCache[float32] = (*CompressedCache[float32])(nil)

// Clone implements model.Cloner: a deep copy of every head's slots, running sums, ring and
// recorded decisions.
func (c *CompressedCache[T]) Clone() model.KVCache[T] {
	n := *c
	n.heads = make([]headState[T], len(c.heads))
	for i, h := range c.heads {
		h.keys = append([]T(nil), h.keys...)
		h.values = append([]T(nil), h.values...)
		h.sk = append([]float64(nil), h.sk...)
		h.sv = append([]float64(nil), h.sv...)
		h.ring = append([]T(nil), h.ring...)
		h.decisions = append([]Decision(nil), h.decisions...)
		n.heads[i] = h
	}
	n.logit = make([]float64, len(c.logit))
	n.omega = make([]float64, len(c.omega))
	n.slot = make([]float64, len(c.slot))
	return &n
}
