package dmc

import (
	"fmt"
	"math"

	"github.com/dmc-project/dmc/model"
)

// Training-free KV-cache policies, the baselines DMC is compared with at equal compression.
// Each keeps at most Budget slots per (layer, KV head) and evicts one slot when a new token
// arrives at a full cache, chosen as its paper does:
//
//	window     the oldest slot (a sliding window of the most recent tokens)
//	streaming  StreamingLLM (arXiv 2309.17453): the oldest slot after the Sinks first tokens
//	h2o        H2O (arXiv 2306.14048): the lowest accumulated attention, outside the Recent newest
//	tova       TOVA (arXiv 2401.06104): the lowest attention from the last query, averaged over
//	           the query heads of the KV head's group
//
// Attention scores are the model's own: softmax(q·kᵀ/√D) of the new token's rotated queries
// over the head's slots, recomputed here when a token arrives (the attention the model then
// runs on the same slots), so the cache works behind model.KVCache unchanged.
const (
	PolicyWindow    = "window"
	PolicyStreaming = "streaming"
	PolicyH2O       = "h2o"
	PolicyTOVA      = "tova"
)

// EvictConfig configures an EvictingCache.
//
// A fixed budget keeps at most Budget slots per head. A Ratio > 0 instead keeps a budget that
// grows with the sequence, ⌈t/Ratio⌉ slots after t tokens (never fewer than Budget, the
// floor): the same compression on every sequence length, as a DMC model's, and as kvpress's
// compression_ratio applies while decoding. A fixed budget leaves every sequence shorter than
// it uncompressed, so it cannot match a compression rate on short benchmark items.
type EvictConfig struct {
	Policy string
	Budget int     // slots per (layer, KV head), ≥ 1 (≥ Sinks + 1 for streaming); with Ratio, the floor
	Ratio  float64 // > 0: a budget of ⌈t/Ratio⌉ slots after t tokens (≥ 1)
	Sinks  int     // streaming: attention-sink tokens kept (0 → 4)
	Recent int     // h2o: newest slots never evicted (0 → half the budget, as the paper's equal split)
}

// Validate checks the configuration and fills the defaults.
func (c *EvictConfig) Validate() error {
	switch c.Policy {
	case PolicyWindow, PolicyStreaming, PolicyH2O, PolicyTOVA:
	default:
		return fmt.Errorf("unknown cache policy %q: use window, streaming, h2o or tova", c.Policy)
	}
	if c.Ratio != 0 {
		if !(c.Ratio >= 1) || math.IsInf(c.Ratio, 0) {
			return fmt.Errorf("the %s cache needs a compression ratio of at least 1, got %g", c.Policy, c.Ratio)
		}
		if c.Policy == PolicyStreaming && c.Sinks == 0 {
			c.Sinks = 4
		}
		floor := 1
		switch c.Policy {
		case PolicyStreaming:
			floor = c.Sinks + 1 // room for the sinks and the newest token
		case PolicyH2O:
			floor = c.Recent + 1
		}
		c.Budget = max(c.Budget, floor)
		if c.Sinks < 0 || c.Recent < 0 {
			return fmt.Errorf("%s: sinks and recent slots cannot be negative", c.Policy)
		}
		return nil
	}
	if c.Budget < 1 {
		return fmt.Errorf("the %s cache needs a budget of at least 1 slot per head, got %d", c.Policy, c.Budget)
	}
	if c.Policy == PolicyStreaming {
		if c.Sinks == 0 {
			c.Sinks = 4
		}
		if c.Sinks < 0 || c.Sinks >= c.Budget {
			return fmt.Errorf("streaming: %d sink tokens leave no room in a budget of %d slots", c.Sinks, c.Budget)
		}
	}
	if c.Policy == PolicyH2O {
		if c.Recent == 0 {
			c.Recent = c.Budget / 2
		}
		if c.Recent < 0 || c.Recent >= c.Budget {
			return fmt.Errorf("h2o: a recent window of %d leaves no heavy-hitter room in a budget of %d", c.Recent, c.Budget)
		}
	}
	return nil
}

// BudgetAt is the most slots a head holds after t tokens.
func (c EvictConfig) BudgetAt(t int) int {
	if c.Ratio > 0 {
		return max(c.Budget, int(math.Ceil(float64(t)/c.Ratio)))
	}
	return c.Budget
}

// SlotsFor is the slots a head holds after a sequence of n tokens: the count does not depend
// on which slots were evicted, so a policy's real compression rate follows from the lengths.
func (c EvictConfig) SlotsFor(n int) int { return min(n, c.BudgetAt(n)) }

// RealCR is the policy's real compression rate on sequences of these lengths (tokens put in
// one cache each): Σ tokens / Σ slots, as DMC's is measured. 1 for no tokens.
func (c EvictConfig) RealCR(lengths []int) float64 {
	var seen, slots int
	for _, n := range lengths {
		seen += n
		slots += c.SlotsFor(n)
	}
	if slots == 0 {
		return 1
	}
	return float64(seen) / float64(slots)
}

// RatioFor returns c with the Ratio whose real CR on sequences of these lengths is target,
// or the closest above (a budget in whole slots moves in steps): ⌈t/Ratio⌉ is below t/Ratio's
// rate on short sequences, so a policy matched to a DMC model's real CR needs a higher Ratio.
// When even the floor of the budget cannot reach target, the highest rate it can is taken
// (ok false). c is validated first, its floor filled.
func (c EvictConfig) RatioFor(lengths []int, target float64) (ec EvictConfig, ok bool, err error) {
	if !(target >= 1) || math.IsInf(target, 0) {
		return c, false, fmt.Errorf("a compression rate to match must be at least 1, got %g", target)
	}
	c.Ratio = 1
	if err := c.Validate(); err != nil {
		return c, false, err
	}
	longest := 1
	for _, n := range lengths {
		longest = max(longest, n)
	}
	at := func(r float64) float64 { c.Ratio = r; return c.RealCR(lengths) }
	lo, hi := 1.0, float64(longest)+1 // at hi every sequence keeps its floor
	if at(hi) < target {
		c.Ratio = hi
		return c, false, nil
	}
	if at(lo) >= target {
		c.Ratio = lo
		return c, true, nil
	}
	for range 60 { // the real CR is non-decreasing in the ratio
		mid := (lo + hi) / 2
		if at(mid) >= target {
			hi = mid
		} else {
			lo = mid
		}
	}
	c.Ratio = hi
	return c, true, nil
}

// String says what the cache keeps, for logs and reports.
func (c EvictConfig) String() string {
	if c.Ratio > 0 {
		return fmt.Sprintf("%s eviction, ⌈t/%.4g⌉ slots per head after t tokens (at least %d)", c.Policy, c.Ratio, c.Budget)
	}
	return fmt.Sprintf("%s eviction, %d slots per head", c.Policy, c.Budget)
}

// EvictingCache is a model.KVCache that evicts by a training-free policy.
type EvictingCache[T model.Float] struct {
	cfg          model.Config
	ec           EvictConfig
	rope         *model.RoPE
	keys, values [][]T       // [layer·Hkv + head] → n·D, keys rotated
	pos          [][]int     // the token position of each slot
	score        [][]float64 // h2o: accumulated attention; tova: the last query's attention
	seen         []int
	qrot         []T
	probs, avg   []float64 // scratch of Put's scores
}

// NewEvictingCache makes an empty cache for cfg.
func NewEvictingCache[T model.Float](cfg model.Config, ec EvictConfig) (*EvictingCache[T], error) {
	if err := ec.Validate(); err != nil {
		return nil, err
	}
	n := cfg.NLayers * cfg.NKVHeads
	return &EvictingCache[T]{cfg: cfg, ec: ec, rope: model.NewRoPE(cfg), keys: make([][]T, n), values: make([][]T, n),
		pos: make([][]int, n), score: make([][]float64, n), seen: make([]int, n), qrot: make([]T, cfg.HeadDim())}, nil
}

// Put evicts one slot of every full head (by the policy, from the scores so far), appends the
// new token, and updates the attention scores with the new token's queries.
func (c *EvictingCache[T]) Put(layer, pos int, q, k, v []T) {
	D, Hkv := c.cfg.HeadDim(), c.cfg.NKVHeads
	G := c.cfg.NHeads / Hkv
	for h := 0; h < Hkv; h++ {
		i := layer*Hkv + h
		if len(c.pos[i]) >= c.ec.BudgetAt(c.seen[i]+1) {
			c.remove(i, c.victim(i))
		}
		start := len(c.keys[i])
		c.keys[i] = append(c.keys[i], k[h*D:(h+1)*D]...)
		model.Rotate(c.rope, c.keys[i][start:], pos)
		c.values[i] = append(c.values[i], v[h*D:(h+1)*D]...)
		c.pos[i] = append(c.pos[i], pos)
		c.score[i] = append(c.score[i], 0)
		c.seen[i]++
		if c.ec.Policy != PolicyH2O && c.ec.Policy != PolicyTOVA {
			continue
		}
		n := len(c.pos[i])
		if cap(c.probs) < n {
			c.probs, c.avg = make([]float64, n, 2*n), make([]float64, n, 2*n)
		}
		avg := c.avg[:n]
		clear(avg)
		invSqrtD := 1 / math.Sqrt(float64(D))
		for g := 0; g < G; g++ {
			qh := h*G + g
			copy(c.qrot, q[qh*D:(qh+1)*D])
			model.Rotate(c.rope, c.qrot, pos)
			p := c.probs[:n]
			m := math.Inf(-1)
			for j := 0; j < n; j++ {
				var s float64
				kj := c.keys[i][j*D : (j+1)*D]
				for d := 0; d < D; d++ {
					s += float64(c.qrot[d]) * float64(kj[d])
				}
				p[j] = s * invSqrtD
				m = max(m, p[j])
			}
			var z float64
			for j := range p {
				p[j] = math.Exp(p[j] - m)
				z += p[j]
			}
			for j := range p {
				avg[j] += p[j] / z / float64(G)
			}
		}
		for j := 0; j < n; j++ {
			if c.ec.Policy == PolicyH2O {
				c.score[i][j] += avg[j]
			} else {
				c.score[i][j] = avg[j]
			}
		}
	}
}

// victim is the slot the policy evicts from head i.
func (c *EvictingCache[T]) victim(i int) int {
	n := len(c.pos[i])
	switch c.ec.Policy {
	case PolicyWindow:
		return 0
	case PolicyStreaming:
		for j := 0; j < n; j++ {
			if c.pos[i][j] >= c.ec.Sinks {
				return j
			}
		}
		return n - 1
	}
	limit := n
	if c.ec.Policy == PolicyH2O {
		recent := c.ec.Recent
		if recent == 0 { // a growing budget: half of it, as the paper's equal split
			recent = n / 2
		}
		limit = n - recent // the newest recent slots stay
	}
	best := 0
	for j := 1; j < limit; j++ {
		if c.score[i][j] < c.score[i][best] {
			best = j
		}
	}
	return best
}

func (c *EvictingCache[T]) remove(i, j int) {
	D := c.cfg.HeadDim()
	c.keys[i] = append(c.keys[i][:j*D], c.keys[i][(j+1)*D:]...)
	c.values[i] = append(c.values[i][:j*D], c.values[i][(j+1)*D:]...)
	c.pos[i] = append(c.pos[i][:j], c.pos[i][j+1:]...)
	c.score[i] = append(c.score[i][:j], c.score[i][j+1:]...)
}

// Slots returns the stored keys and values of (layer, kvHead).
func (c *EvictingCache[T]) Slots(layer, kvHead int) ([]T, []T, int) {
	i := layer*c.cfg.NKVHeads + kvHead
	return c.keys[i], c.values[i], len(c.pos[i])
}

// Positions are the token positions the slots of (layer, kvHead) hold (tests, inspection).
func (c *EvictingCache[T]) Positions(layer, kvHead int) []int {
	return append([]int(nil), c.pos[layer*c.cfg.NKVHeads+kvHead]...)
}

// Tokens is how many tokens (layer, kvHead) has seen; NumSlots how many it holds: their
// ratio is the real compression rate, reported as for DMC.
func (c *EvictingCache[T]) Tokens(layer, kvHead int) int { return c.seen[layer*c.cfg.NKVHeads+kvHead] }

// NumSlots is the number of slots (layer, kvHead) holds.
func (c *EvictingCache[T]) NumSlots(layer, kvHead int) int {
	return len(c.pos[layer*c.cfg.NKVHeads+kvHead])
}

// Policy is the cache's eviction policy; Budget its slots per (layer, KV head).
func (c *EvictingCache[T]) Policy() string { return c.ec.Policy }

// Budget is the most slots one (layer, KV head) holds (with a Ratio, the floor of the budget).
func (c *EvictingCache[T]) Budget() int { return c.ec.Budget }

// Config is the cache's configuration, defaults filled.
func (c *EvictingCache[T]) Config() EvictConfig { return c.ec }

// Clone implements model.Cloner.
func (c *EvictingCache[T]) Clone() model.KVCache[T] {
	n := *c
	cp := func(x [][]T) [][]T {
		out := make([][]T, len(x))
		for i := range x {
			out[i] = append([]T(nil), x[i]...)
		}
		return out
	}
	n.keys, n.values = cp(c.keys), cp(c.values)
	n.pos = make([][]int, len(c.pos))
	for i := range c.pos {
		n.pos[i] = append([]int(nil), c.pos[i]...)
	}
	n.score = make([][]float64, len(c.score))
	for i := range c.score {
		n.score[i] = append([]float64(nil), c.score[i]...)
	}
	n.seen = append([]int(nil), c.seen...)
	n.qrot = make([]T, len(c.qrot))
	n.probs, n.avg = nil, nil // scratch: each copy its own
	return &n
}
