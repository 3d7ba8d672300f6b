package model

import (
	"fmt"
	"math"
)

// Decoder runs a model over many sequences, each with its own KV cache: the one loop that
// generate, eval, bench and serve share. The pure-Go CPUDecoder and the CUDA engine (package
// kernels) implement it. A Decoder is not safe for concurrent use.
type Decoder interface {
	// Prefill starts one sequence per prompt. It returns the new sequence ids, the greedy next
	// token of each, and (when wantLogits) the logits of each prompt's last token.
	Prefill(prompts [][]int, wantLogits bool) (ids []int, next []int, logits [][]float32, err error)
	// Decode feeds tokens[i] to sequence ids[i] and returns the greedy next tokens and
	// optionally the logits.
	Decode(ids []int, tokens []int, wantLogits bool) (next []int, logits [][]float32, err error)
	// Release ends sequences and frees their caches.
	Release(ids ...int) error
	// LogProbs scores tokens as one new sequence: out[i] = log p(tokens[i+1] | tokens[:i+1])
	// for i < len(tokens)−1, with the decoder's real cache. The sequence is released after.
	LogProbs(tokens []int) ([]float64, error)
}

// SlotCounter is a Decoder that reports how many KV slots a live sequence holds in each
// (layer, KV head) row, layer-major: what the real compression rate is measured from.
type SlotCounter interface {
	RowSlots(id int) ([]int, error)
}

// TargetScorer is a Decoder that can return, instead of a step's logits, the log-probability
// of a given next token per sequence, computed where the logits are (on the GPU only B numbers
// come back instead of B × vocabulary logits): what scoring needs.
type TargetScorer interface {
	// DecodeScore is Decode, then logp[i] = log p(targets[i] | sequence ids[i] with tokens[i]).
	DecodeScore(ids, tokens, targets []int) (next []int, logp []float64, err error)
}

// CPUDecoder is the pure-Go Decoder: the reference forward over caches from NewCache.
type CPUDecoder struct {
	m        *Model[float32]
	newCache func() (KVCache[float32], error)
	seqs     map[int]*cpuSeq
	nextID   int
	// Scored, when set, hears every sequence that ends (LogProbs, each continuation of
	// LogProbsShared, Release) with the cache it leaves and the tokens put in it: what a real
	// compression rate on scored text is measured from (RowSlotsOf). It may be called from
	// several goroutines at once.
	Scored func(cache KVCache[float32], tokens int)
}

type cpuSeq struct {
	cache KVCache[float32]
	pos   int
}

var _ Decoder = (*CPUDecoder)(nil)

// NewCPUDecoder decodes with w; newCache makes the cache of each new sequence.
func NewCPUDecoder(w *Weights, newCache func() (KVCache[float32], error)) *CPUDecoder {
	return &CPUDecoder{m: New(w), newCache: newCache, seqs: map[int]*cpuSeq{}}
}

// Active is the number of sequences holding a cache.
func (d *CPUDecoder) Active() int { return len(d.seqs) }

// Cache returns the cache of sequence id (nil when there is none), for its statistics.
func (d *CPUDecoder) Cache(id int) KVCache[float32] {
	if s := d.seqs[id]; s != nil {
		return s.cache
	}
	return nil
}

// RowSlots implements SlotCounter.
func (d *CPUDecoder) RowSlots(id int) ([]int, error) {
	s := d.seqs[id]
	if s == nil {
		return nil, fmt.Errorf("row slots: no active sequence %d", id)
	}
	return RowSlotsOf(d.m.Cfg, s.cache), nil
}

// RowSlotsOf is the slots cache holds in each (layer, KV head) row, layer-major.
func RowSlotsOf[T Float](cfg Config, cache KVCache[T]) []int {
	out := make([]int, 0, cfg.NLayers*cfg.NKVHeads)
	for l := 0; l < cfg.NLayers; l++ {
		for h := 0; h < cfg.NKVHeads; h++ {
			_, _, n := cache.Slots(l, h)
			out = append(out, n)
		}
	}
	return out
}

// Prefill implements Decoder.
func (d *CPUDecoder) Prefill(prompts [][]int, wantLogits bool) ([]int, []int, [][]float32, error) {
	ids, next := make([]int, len(prompts)), make([]int, len(prompts))
	var logits [][]float32
	if wantLogits {
		logits = make([][]float32, len(prompts))
	}
	for i, p := range prompts {
		if len(p) == 0 {
			_ = d.Release(ids[:i]...)
			return nil, nil, nil, fmt.Errorf("prefill: prompt %d is empty", i)
		}
		c, err := d.newCache()
		if err != nil {
			_ = d.Release(ids[:i]...)
			return nil, nil, nil, err
		}
		l, err := d.m.Forward(c, p, 0, false)
		if err != nil {
			_ = d.Release(ids[:i]...)
			return nil, nil, nil, err
		}
		ids[i], d.nextID = d.nextID, d.nextID+1
		d.seqs[ids[i]] = &cpuSeq{cache: c, pos: len(p)}
		next[i] = Argmax(l)
		if wantLogits {
			logits[i] = l
		}
	}
	return ids, next, logits, nil
}

// Decode implements Decoder.
func (d *CPUDecoder) Decode(ids []int, tokens []int, wantLogits bool) ([]int, [][]float32, error) {
	if len(ids) != len(tokens) {
		return nil, nil, fmt.Errorf("decode: %d sequences but %d tokens", len(ids), len(tokens))
	}
	next := make([]int, len(ids))
	var logits [][]float32
	if wantLogits {
		logits = make([][]float32, len(ids))
	}
	for i, id := range ids {
		s := d.seqs[id]
		if s == nil {
			return nil, nil, fmt.Errorf("decode: no active sequence %d", id)
		}
		l, err := d.m.Forward(s.cache, []int{tokens[i]}, s.pos, false)
		if err != nil {
			return nil, nil, err
		}
		s.pos++
		next[i] = Argmax(l)
		if wantLogits {
			logits[i] = l
		}
	}
	return next, logits, nil
}

// DecodeScore implements TargetScorer with Decode and LogSoftmaxAt.
func (d *CPUDecoder) DecodeScore(ids, tokens, targets []int) ([]int, []float64, error) {
	if len(targets) != len(ids) {
		return nil, nil, fmt.Errorf("decode score: %d sequences but %d targets", len(ids), len(targets))
	}
	V := d.m.Cfg.VocabSize
	for i, t := range targets {
		if t < 0 || t >= V {
			return nil, nil, fmt.Errorf("decode score: target %d at index %d is outside the vocabulary [0, %d)", t, i, V)
		}
	}
	next, logits, err := d.Decode(ids, tokens, true)
	if err != nil {
		return nil, nil, err
	}
	lp := make([]float64, len(ids))
	for i, l := range logits {
		lp[i] = LogSoftmaxAt(l, targets[i])
	}
	return next, lp, nil
}

// Release implements Decoder.
func (d *CPUDecoder) Release(ids ...int) error {
	for _, id := range ids {
		s, ok := d.seqs[id]
		if !ok {
			return fmt.Errorf("release: no active sequence %d", id)
		}
		if d.Scored != nil {
			d.Scored(s.cache, s.pos)
		}
		delete(d.seqs, id)
	}
	return nil
}

// LogProbs implements Decoder with one batched forward over all tokens (the same computation
// as token-by-token decoding, see Forward).
func (d *CPUDecoder) LogProbs(tokens []int) ([]float64, error) {
	if len(tokens) < 2 {
		return nil, nil
	}
	c, err := d.newCache()
	if err != nil {
		return nil, err
	}
	V := d.m.Cfg.VocabSize
	all, err := d.m.Forward(c, tokens[:len(tokens)-1], 0, true)
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(tokens)-1)
	for i := range out {
		out[i] = LogSoftmaxAt(all[i*V:(i+1)*V], tokens[i+1])
	}
	if d.Scored != nil {
		d.Scored(c, len(tokens)-1)
	}
	return out, nil
}

// PromptLogits returns the logits after each of tokens (row i: the distribution of the token
// after tokens[:i+1]) from one forward over a new sequence with the decoder's cache, which is
// dropped after (serve's echoed prompt log-probabilities).
func (d *CPUDecoder) PromptLogits(tokens []int) ([][]float32, error) {
	if len(tokens) == 0 {
		return nil, nil
	}
	c, err := d.newCache()
	if err != nil {
		return nil, err
	}
	V := d.m.Cfg.VocabSize
	all, err := d.m.Forward(c, tokens, 0, true)
	if err != nil {
		return nil, err
	}
	out := make([][]float32, len(tokens))
	for i := range out {
		out[i] = all[i*V : (i+1)*V : (i+1)*V]
	}
	return out, nil
}

// LogProbsShared scores several continuations of one prefix: out[r][i] = log p(rests[r][i] |
// prefix, rests[r][:i]). The prefix goes through the model once and each continuation starts
// from a copy of its cache (a cache that is not a Cloner is recomputed per continuation); the
// result equals LogProbs(prefix + rest) on the same positions.
func (d *CPUDecoder) LogProbsShared(prefix []int, rests [][]int) ([][]float64, error) {
	out := make([][]float64, len(rests))
	if len(prefix) == 0 {
		return nil, fmt.Errorf("log-probabilities: empty prefix")
	}
	c, err := d.newCache()
	if err != nil {
		return nil, err
	}
	last, err := d.m.Forward(c, prefix, 0, false)
	if err != nil {
		return nil, err
	}
	cl, canClone := c.(Cloner[float32])
	V := d.m.Cfg.VocabSize
	for r, rest := range rests {
		if len(rest) == 0 {
			continue
		}
		if !canClone {
			lp, err := ContinuationLogProbs(d, prefix, rest)
			if err != nil {
				return nil, err
			}
			out[r] = lp
			continue
		}
		lp := make([]float64, len(rest))
		lp[0] = LogSoftmaxAt(last, rest[0])
		if len(rest) > 1 {
			own := cl.Clone()
			all, err := d.m.Forward(own, rest[:len(rest)-1], len(prefix), true)
			if err != nil {
				return nil, err
			}
			for i := 1; i < len(rest); i++ {
				lp[i] = LogSoftmaxAt(all[(i-1)*V:i*V], rest[i])
			}
			if d.Scored != nil {
				d.Scored(own, len(prefix)+len(rest)-1)
			}
		} else if d.Scored != nil {
			d.Scored(c, len(prefix))
		}
		out[r] = lp
	}
	return out, nil
}

// ContinuationLogProbs scores rest after prefix with d, whole: out[i] = log p(rest[i] |
// prefix, rest[:i]).
func ContinuationLogProbs(d Decoder, prefix, rest []int) ([]float64, error) {
	lp, err := d.LogProbs(append(append([]int(nil), prefix...), rest...))
	if err != nil {
		return nil, err
	}
	return lp[len(prefix)-1:], nil
}

// LogProbsByDecoding is LogProbs for any Decoder that can only prefill and decode: one prefill
// of the first token, then one decode step per token, with logits.
func LogProbsByDecoding(d Decoder, tokens []int) ([]float64, error) {
	if len(tokens) < 2 {
		return nil, nil
	}
	ids, _, logits, err := d.Prefill([][]int{tokens[:1]}, true)
	if err != nil {
		return nil, err
	}
	defer d.Release(ids...)
	out := make([]float64, len(tokens)-1)
	for i := range out {
		out[i] = LogSoftmaxAt(logits[0], tokens[i+1])
		if i+1 < len(out) {
			if _, logits, err = d.Decode(ids, tokens[i+1:i+2], true); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// LogSoftmaxAt is log softmax(logits)[i], computed stably in float64.
func LogSoftmaxAt[T Float](logits []T, i int) float64 {
	m := float64(logits[Argmax(logits)])
	var s float64
	for _, l := range logits {
		s += math.Exp(float64(l) - m)
	}
	return float64(logits[i]) - m - math.Log(s)
}
