package eval

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// CacheFactory makes a fresh cache for one sequence.
type CacheFactory func() (model.KVCache[float32], error)

// PPLOptions configures Perplexity.
type PPLOptions struct {
	// SeqLen is the longest sequence decoded from one cache (default: the model's context).
	SeqLen int
	// MaxTokens stops after about this many scored tokens (0 = all).
	MaxTokens int
	// Workers decode this many sequences at once (default GOMAXPROCS).
	Workers int
	// Progress, when set, is called after each sequence with the tokens scored so far.
	Progress func(tokens int)
}

// resolve fills the defaults: the model's context as the sequence length (also when longer
// than it), GOMAXPROCS workers.
func (o PPLOptions) resolve(cfg model.Config) (PPLOptions, error) {
	if o.SeqLen <= 0 || o.SeqLen > cfg.MaxSeqLen {
		o.SeqLen = cfg.MaxSeqLen
	}
	if o.SeqLen < 2 {
		return o, fmt.Errorf("eval: sequence length %d is too short to score anything", o.SeqLen)
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	return o, nil
}

// PPLResult is the outcome of Perplexity. The JSON field names are the stable interface of
// `dmc eval --json`.
type PPLResult struct {
	PPL        float64     `json:"ppl"`
	NLL        float64     `json:"nll"`
	Tokens     int         `json:"tokens"`
	Sequences  int         `json:"sequences"`
	CR         float64     `json:"cr"`
	CRPerLayer []float64   `json:"cr_per_layer"`
	CRPerHead  [][]float64 `json:"cr_per_head"`
	Slots      int64       `json:"slots"`
	CacheBytes int64       `json:"cache_bytes_bf16"`
	Seconds    float64     `json:"seconds"`
	TokensPerS float64     `json:"tokens_per_s"`
}

// compressionStats is what a cache reports about its slots; vanilla caches keep one per token.
type compressionStats interface {
	Tokens(layer, kvHead int) int
	NumSlots(layer, kvHead int) int
}

type seqResult struct {
	nll    float64
	tokens int
	seen   []int64 // per (layer, kv head)
	slots  []int64
}

// Perplexity scores next-token prediction on the documents, decoding each one with a fresh
// cache from newCache, and reports the real compression rate of those caches.
func Perplexity(ctx context.Context, w *model.Weights, newCache CacheFactory, docs iter.Seq2[[]int32, error], opts PPLOptions) (*PPLResult, error) {
	cfg := w.Config
	opts, err := opts.resolve(cfg)
	if err != nil {
		return nil, err
	}
	workers := opts.Workers
	m := model.New(w)
	heads := cfg.NLayers * cfg.NKVHeads
	start := time.Now()

	type job struct {
		idx int
		seq []int
	}
	jobs := make(chan job)
	var mu sync.Mutex
	results := map[int]seqResult{}
	var firstErr error
	var wg sync.WaitGroup
	scored := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				r, err := scoreSequence(m, newCache, j.seq, heads)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				results[j.idx] = r
				scored += r.tokens
				if opts.Progress != nil {
					opts.Progress(scored)
				}
				mu.Unlock()
			}
		}()
	}
	n := 0
	var iterErr error
	func() {
		defer close(jobs)
		for seq, err := range sequences(docs, cfg.VocabSize, opts.SeqLen, opts.MaxTokens) {
			if err != nil {
				iterErr = err
				return
			}
			select {
			case jobs <- job{n, seq}:
			case <-ctx.Done():
				iterErr = ctx.Err()
				return
			}
			n++
		}
	}()
	wg.Wait()
	if iterErr != nil {
		return nil, iterErr
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if n == 0 {
		return nil, errors.New("eval: no sequence of at least 2 tokens to score in the data")
	}
	// Sum in document order so the result does not depend on scheduling.
	res := &PPLResult{Sequences: n}
	seen, slots := make([]int64, heads), make([]int64, heads)
	for i := 0; i < n; i++ {
		r := results[i]
		res.NLL += r.nll
		res.Tokens += r.tokens
		for h := range seen {
			seen[h] += r.seen[h]
			slots[h] += r.slots[h]
		}
	}
	res.finish(cfg, seen, slots, start)
	return res, nil
}

// sequences cuts the documents into the sequences Perplexity scores: chunks of up to seqLen
// tokens (of at least 2), until about maxTokens are queued (0: all), checking every token id
// against the vocabulary.
func sequences(docs iter.Seq2[[]int32, error], vocab, seqLen, maxTokens int) iter.Seq2[[]int, error] {
	return func(yield func([]int, error) bool) {
		queued := 0
		for doc, err := range docs {
			if err != nil {
				yield(nil, err)
				return
			}
			for s := 0; s+1 < len(doc); s += seqLen {
				chunk := doc[s:min(s+seqLen, len(doc))]
				seq := make([]int, len(chunk))
				for i, t := range chunk {
					if int(t) >= vocab || t < 0 {
						yield(nil, fmt.Errorf("eval: the data has token id %d but the model's vocabulary has %d entries: it was tokenised with a different tokenizer; re-run dmc data prepare with the model's tokenizer", t, vocab))
						return
					}
					seq[i] = int(t)
				}
				if !yield(seq, nil) {
					return
				}
				queued += len(seq) - 1
				if maxTokens > 0 && queued >= maxTokens {
					return
				}
			}
		}
	}
}

// finish turns the summed NLL into the mean and the perplexity, times the run from start, and
// fills the real compression rate from the tokens seen and slots held per (layer, KV head).
func (res *PPLResult) finish(cfg model.Config, seen, slots []int64, start time.Time) {
	res.NLL /= float64(res.Tokens)
	res.PPL = math.Exp(res.NLL)
	res.Seconds = time.Since(start).Seconds()
	res.TokensPerS = float64(res.Tokens) / res.Seconds
	fillCR(res, cfg, seen, slots)
}

func fillCR(res *PPLResult, cfg model.Config, seen, slots []int64) {
	var totSeen, totSlots int64
	res.CRPerLayer = make([]float64, cfg.NLayers)
	res.CRPerHead = make([][]float64, cfg.NLayers)
	for l := 0; l < cfg.NLayers; l++ {
		var ls, lk int64
		res.CRPerHead[l] = make([]float64, cfg.NKVHeads)
		for h := 0; h < cfg.NKVHeads; h++ {
			i := l*cfg.NKVHeads + h
			res.CRPerHead[l][h] = ratio(seen[i], slots[i])
			ls += seen[i]
			lk += slots[i]
		}
		res.CRPerLayer[l] = ratio(ls, lk)
		totSeen += ls
		totSlots += lk
	}
	res.CR = ratio(totSeen, totSlots)
	res.Slots = totSlots
	res.CacheBytes = totSlots * int64(2*cfg.HeadDim()*2)
}

func ratio(a, b int64) float64 {
	if b == 0 {
		return 1
	}
	return float64(a) / float64(b)
}

// scoreSequence decodes seq with a fresh cache and sums −log p(seq[t+1] | seq[:t+1]).
func scoreSequence(m *model.Model[float32], newCache CacheFactory, seq []int, heads int) (seqResult, error) {
	cache, err := newCache()
	if err != nil {
		return seqResult{}, err
	}
	logits, err := m.Forward(cache, seq[:len(seq)-1], 0, true)
	if err != nil {
		return seqResult{}, err
	}
	V := m.Cfg.VocabSize
	r := seqResult{tokens: len(seq) - 1, seen: make([]int64, heads), slots: make([]int64, heads)}
	for t := 0; t+1 < len(seq); t++ {
		r.nll += crossEntropy(logits[t*V:(t+1)*V], seq[t+1])
	}
	cs, ok := cache.(compressionStats)
	for l := 0; l < m.Cfg.NLayers; l++ {
		for h := 0; h < m.Cfg.NKVHeads; h++ {
			i := l*m.Cfg.NKVHeads + h
			if ok {
				r.seen[i], r.slots[i] = int64(cs.Tokens(l, h)), int64(cs.NumSlots(l, h))
			} else {
				_, _, n := cache.Slots(l, h)
				r.seen[i], r.slots[i] = int64(r.tokens), int64(n)
			}
		}
	}
	return r, nil
}

func crossEntropy(logits []float32, target int) float64 {
	maxL := math.Inf(-1)
	for _, l := range logits {
		maxL = max(maxL, float64(l))
	}
	var sum float64
	for _, l := range logits {
		sum += math.Exp(float64(l) - maxL)
	}
	return math.Log(sum) + maxL - float64(logits[target])
}

// VanillaCaches makes uncompressed caches.
func VanillaCaches(cfg model.Config) CacheFactory {
	return func() (model.KVCache[float32], error) { return model.NewVanillaCache[float32](cfg), nil }
}

// EvictingCaches makes caches of a training-free eviction policy (dmc.EvictingCache).
func EvictingCaches(cfg model.Config, ec dmc.EvictConfig) CacheFactory {
	return func() (model.KVCache[float32], error) { return dmc.NewEvictingCache[float32](cfg, ec) }
}

// DMCCaches makes DMC compressed caches.
func DMCCaches(cfg model.Config, dc dmc.Config) CacheFactory {
	return func() (model.KVCache[float32], error) { return dmc.NewCompressedCache[float32](cfg, dc) }
}

// SequenceLengths lists the tokens a cache sees for every sequence Perplexity scores (the same
// chunks of seqLen, up to maxTokens): what fixes the real compression rate of a fixed budget.
func SequenceLengths(docs iter.Seq2[[]int32, error], seqLen, maxTokens int) ([]int, error) {
	var out []int
	queued := 0
	for doc, err := range docs {
		if err != nil {
			return nil, err
		}
		for s := 0; s+1 < len(doc); s += seqLen {
			n := min(s+seqLen, len(doc)) - s - 1
			out = append(out, n)
			queued += n
			if maxTokens > 0 && queued >= maxTokens {
				return out, nil
			}
		}
	}
	return out, nil
}

// BudgetForCR is the largest per-head slot budget whose real compression rate on sequences of
// these lengths (Σ tokens / Σ min(tokens, budget)) is at least cr: a fixed-budget eviction
// policy matched to a measured compression rate (a DMC model's). 0 when no budget reaches cr.
func BudgetForCR(lengths []int, cr float64) int {
	rate := func(b int) float64 {
		var seen, slots float64
		for _, n := range lengths {
			seen += float64(n)
			slots += float64(min(n, b))
		}
		if slots == 0 {
			return 0
		}
		return seen / slots
	}
	lo, hi := 1, 1
	for _, n := range lengths {
		hi = max(hi, n)
	}
	if rate(lo) < cr {
		return 0
	}
	for lo < hi { // the largest b with rate(b) ≥ cr; rate falls as b grows
		mid := (lo + hi + 1) / 2
		if rate(mid) >= cr {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}
