package tasks

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/model"
)

// Scorer returns the log-likelihood of a request's continuation given its context, summed
// over the continuation's tokens, and whether every one of them is the model's greedy choice.
type Scorer interface {
	LogLikelihood(r Request) (ll float64, greedy bool, err error)
}

// DecoderScorer scores with a model's decoder (its real cache) and tokenizer, as lm-eval's
// Hugging Face model does: trailing white space of the context moves to the continuation, the
// pair is encoded whole and the continuation is what follows the context's own encoding, BOS
// first, and contexts longer than MaxLen tokens lose their oldest tokens.
type DecoderScorer struct {
	Dec    model.Decoder
	Tok    tokenizer.Tokenizer
	MaxLen int
	// Greedy asks for the greedy check too (LAMBADA's acc); it decodes the continuation token
	// by token, so it is off for multiple-choice tasks.
	Greedy bool
}

// SlotTally sums what scored sequences leave in their caches over every (layer, KV head)
// row: Σ tokens / Σ slots is the cache's real compression rate on them, measured as dmc eval
// measures it on perplexity. Safe for concurrent use.
type SlotTally struct {
	mu            sync.Mutex
	tokens, slots int64
}

// Add records one sequence that put tokens into each row and left rowSlots slots.
func (t *SlotTally) Add(tokens int, rowSlots []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, n := range rowSlots {
		t.tokens += int64(tokens)
		t.slots += int64(n)
	}
}

// CR is the real compression rate of what was added (0 when nothing was).
func (t *SlotTally) CR() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slots == 0 {
		return 0
	}
	return float64(t.tokens) / float64(t.slots)
}

// EncodePair is lm-eval's _encode_pair: the context's and the continuation's tokens.
func EncodePair(tok tokenizer.Tokenizer, context, continuation string) (ctx, cont []int) {
	if n := len(context) - len(strings.TrimRightFunc(context, unicode.IsSpace)); n > 0 {
		continuation = context[len(context)-n:] + continuation
		context = context[:len(context)-n]
	}
	whole := tok.Encode(context+continuation, false, false)
	ctx = tok.Encode(context, false, false)
	if len(ctx) > len(whole) {
		ctx = whole[:0]
	}
	return ctx, whole[len(ctx):]
}

// tokens is a request's token sequence (BOS, context, continuation, left-truncated to MaxLen)
// and the index of its first continuation token.
func (s DecoderScorer) tokens(r Request) ([]int, int, error) {
	ctx, cont := EncodePair(s.Tok, r.Context, r.Continuation)
	if len(cont) == 0 {
		return nil, 0, fmt.Errorf("the continuation %q encodes to no tokens", r.Continuation)
	}
	tokens := append(append([]int{s.Tok.BOS()}, ctx...), cont...)
	first := len(tokens) - len(cont) // index of the first continuation token
	if s.MaxLen > 1 && len(tokens) > s.MaxLen {
		// Keep the newest MaxLen tokens, as lm-eval truncates on the left. A continuation
		// longer than the context is scored on the tokens that keep a prefix in the window.
		cut := len(tokens) - s.MaxLen
		tokens = tokens[cut:]
		first = max(1, first-cut)
	}
	return tokens, first, nil
}

// SharedScorer is a decoder that scores several continuations of one prefix, computing the
// prefix once (model.CPUDecoder, retrofit.Decoder).
type SharedScorer interface {
	LogProbsShared(prefix []int, rests [][]int) ([][]float64, error)
}

// LogLikelihoods scores the requests of one item. When the decoder is a SharedScorer, the
// tokens all requests share before their first continuation token (the choices' common
// context) go through the model once, and each choice continues a copy of that cache: the
// same numbers as LogLikelihood per request, for a fraction of the work.
func (s DecoderScorer) LogLikelihoods(rs []Request) ([]float64, []bool, error) {
	ss, shared := s.Dec.(SharedScorer)
	if !shared || s.Greedy || len(rs) < 2 {
		return s.each(rs)
	}
	toks, firsts := make([][]int, len(rs)), make([]int, len(rs))
	P := -1
	for i, r := range rs {
		var err error
		if toks[i], firsts[i], err = s.tokens(r); err != nil {
			return nil, nil, err
		}
		if P < 0 {
			P = firsts[i]
		}
		P = min(P, firsts[i], commonPrefix(toks[0], toks[i]))
	}
	if P < 1 { // left truncation made the sequences differ from their first token
		return s.each(rs)
	}
	rests := make([][]int, len(rs))
	for i := range rs {
		rests[i] = toks[i][P:]
	}
	lps, err := ss.LogProbsShared(toks[0][:P], rests)
	if err != nil {
		return nil, nil, err
	}
	lls, gs := make([]float64, len(rs)), make([]bool, len(rs))
	for i := range rs {
		for j := firsts[i]; j < len(toks[i]); j++ {
			lls[i] += lps[i][j-P]
		}
	}
	return lls, gs, nil
}

// each scores the requests one by one.
func (s DecoderScorer) each(rs []Request) ([]float64, []bool, error) {
	lls, gs := make([]float64, len(rs)), make([]bool, len(rs))
	for i, r := range rs {
		var err error
		if lls[i], gs[i], err = s.LogLikelihood(r); err != nil {
			return nil, nil, err
		}
	}
	return lls, gs, nil
}

func commonPrefix(a, b []int) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// LogLikelihood implements Scorer.
func (s DecoderScorer) LogLikelihood(r Request) (float64, bool, error) {
	tokens, first, err := s.tokens(r)
	if err != nil {
		return 0, false, err
	}
	if !s.Greedy {
		lp, err := s.Dec.LogProbs(tokens)
		if err != nil {
			return 0, false, err
		}
		var ll float64
		for i := first; i < len(tokens); i++ {
			ll += lp[i-1]
		}
		return ll, false, nil
	}
	ids, next, logits, err := s.Dec.Prefill([][]int{tokens[:first]}, true)
	if err != nil {
		return 0, false, err
	}
	defer s.Dec.Release(ids...)
	var ll float64
	greedy := true
	for i := first; i < len(tokens); i++ {
		ll += model.LogSoftmaxAt(logits[0], tokens[i])
		greedy = greedy && next[0] == tokens[i]
		if i+1 < len(tokens) {
			if next, logits, err = s.Dec.Decode(ids, tokens[i:i+1], true); err != nil {
				return 0, false, err
			}
		}
	}
	return ll, greedy, nil
}

// Metric is a value with lm-eval's standard error.
type Metric struct {
	Value, Stderr float64
}

// Sample is one scored item (--log-samples).
type Sample struct {
	Index   int       `json:"doc_id"`
	Source  string    `json:"source"`
	LL      []float64 `json:"loglikelihoods"`
	Greedy  []bool    `json:"is_greedy,omitempty"`
	Gold    int       `json:"target"`
	Acc     float64   `json:"acc"`
	AccNorm *float64  `json:"acc_norm,omitempty"`
}

// Result is one task's scores.
type Result struct {
	Task       string
	Version    string
	N          int
	NShot      int
	Acc        Metric
	AccNorm    *Metric
	Perplexity *Metric
	// CR is the cache's real compression rate on the task's sequences (0: not measured).
	CR      float64
	Samples []Sample
}

// Options are Score's settings.
type Options struct {
	NumFewShot int    // examples prepended to each item's context
	Limit      int    // score only the first Limit items (0: all)
	Seed       uint64 // few-shot sampling
	// Workers scores items in parallel (0: one per core); the Scorer must then be safe for
	// concurrent use (DecoderScorer is, without Greedy). Results do not depend on it.
	Workers int
	// Progress, when set, hears the items scored so far.
	Progress func(done, total int)
	// Context, when set, stops the scoring once it is cancelled (Ctrl-C): no new item starts,
	// and Score returns its error. A RequestScorer (the engine's batched path) is only checked
	// before its one call, which runs to its end.
	Context context.Context
}

// ConcurrentScorer is implemented by scorers that say whether they may run in parallel.
type ConcurrentScorer interface{ Concurrent() bool }

// Concurrent reports whether LogLikelihood may run in parallel: the batched log-probability
// path may, the greedy check (prefill and decode on shared sequences) may not.
func (s DecoderScorer) Concurrent() bool { return !s.Greedy }

// Prepare returns the items Score scores under o: the first o.Limit, each with its few-shot
// context. The shots are drawn in item order from o.Seed, so they do not depend on Workers.
func Prepare(t *Task, items, shots []Item, o Options) ([]Item, error) {
	if o.Limit > 0 && o.Limit < len(items) {
		items = items[:o.Limit]
	}
	if o.NumFewShot < 0 {
		return nil, fmt.Errorf("%s: --num-fewshot must be ≥ 0, got %d", t.Name, o.NumFewShot)
	}
	if t.MaxShots == nil && o.NumFewShot > 0 && o.NumFewShot > len(shots)-1 {
		return nil, fmt.Errorf("%s: %d few-shot examples asked for, but its few-shot split has %d items", t.Name, o.NumFewShot, len(shots))
	}
	rng := rand.New(rand.NewPCG(o.Seed, 1234))
	prepared := make([]Item, len(items))
	for i, it := range items {
		if t.MaxShots != nil && o.NumFewShot > t.MaxShots(shots, it) {
			return nil, fmt.Errorf("%s: %s: %d few-shot examples asked for, but the few-shot split has %d for it", t.Name, it.Source, o.NumFewShot, t.MaxShots(shots, it))
		}
		switch {
		case t.FewShot != nil:
			it = t.FewShot(shots, it, o.NumFewShot, rng)
		case o.NumFewShot > 0:
			it = withShots(pickShots(rng, shots, it, o.NumFewShot), it)
		}
		prepared[i] = it
	}
	return prepared, nil
}

// CachedLengths is, for every request of the prepared items, the tokens its scored sequence
// puts in the cache (its tokens less the last, which is scored and never cached), without
// running the model: what a compression rate is solved from before scoring.
func (s DecoderScorer) CachedLengths(prepared []Item) ([]int, error) {
	var out []int
	for _, it := range prepared {
		for _, r := range it.Requests {
			toks, _, err := s.tokens(r)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", it.Source, err)
			}
			out = append(out, len(toks)-1)
		}
	}
	return out, nil
}

// Score evaluates a task's items with s.
func Score(t *Task, items, shots []Item, s Scorer, o Options) (*Result, error) {
	prepared, err := Prepare(t, items, shots, o)
	if err != nil {
		return nil, err
	}
	ctx := o.Context
	if ctx == nil {
		ctx = context.Background()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res := &Result{Task: t.Name, Version: t.Version, N: len(prepared), NShot: o.NumFewShot}
	res.Samples = make([]Sample, len(prepared))
	if rsc, ok := s.(RequestScorer); ok {
		if err := scoreAll(t, rsc, prepared, res.Samples, o.Progress); err != nil {
			return nil, err
		}
		return summarise(t, res, nil, o.Seed)
	}
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if cs, ok := s.(ConcurrentScorer); !ok || !cs.Concurrent() {
		workers = 1
	}
	errs := make([]error, len(prepared))
	var mu sync.Mutex
	next, done := 0, 0
	var wg sync.WaitGroup
	for w := 0; w < min(workers, len(prepared)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= len(prepared) || ctx.Err() != nil {
					return
				}
				res.Samples[i], errs[i] = scoreItem(t, s, i, prepared[i])
				mu.Lock()
				done++
				if o.Progress != nil {
					o.Progress(done, len(prepared))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: stopped after %d of %d items: %w", t.Name, done, len(prepared), err)
	}
	return summarise(t, res, errs, o.Seed)
}

// summarise fills a result's metrics from its samples (the first error in errs, if any, wins).
func summarise(t *Task, res *Result, errs []error, seed uint64) (*Result, error) {
	var accs, norms, lls []float64
	for i, smp := range res.Samples {
		if errs != nil && errs[i] != nil {
			return nil, errs[i]
		}
		accs = append(accs, smp.Acc)
		if smp.AccNorm != nil {
			norms = append(norms, *smp.AccNorm)
		}
		if t.Kind == LogLikelihood {
			lls = append(lls, smp.LL[0])
		}
	}
	res.Acc = meanStderr(accs)
	if t.Norm && t.Kind == MultipleChoice {
		m := meanStderr(norms)
		res.AccNorm = &m
	}
	if t.Kind == LogLikelihood {
		p := perplexity(lls, seed)
		res.Perplexity = &p
	}
	return res, nil
}

// scoreAll scores every request of the items in one call of a RequestScorer.
func scoreAll(t *Task, s RequestScorer, items []Item, out []Sample, progress func(done, total int)) error {
	var all []Request
	ends := make([]int, len(items)) // ends[i]: requests of items[:i+1]
	for i, it := range items {
		all = append(all, it.Requests...)
		ends[i] = len(all)
	}
	item := 0
	lls, gs, err := s.ScoreRequests(all, func(done int) {
		for item < len(items) && ends[item] <= done {
			item++
		}
		if progress != nil {
			progress(item, len(items))
		}
	})
	if err != nil {
		return fmt.Errorf("%s: %w", t.Name, err)
	}
	start := 0
	for i, it := range items {
		out[i] = sampleOf(t, i, it, lls[start:ends[i]], gs[start:ends[i]])
		start = ends[i]
	}
	return nil
}

// scoreItem scores the requests of one item.
func scoreItem(t *Task, s Scorer, i int, it Item) (Sample, error) {
	var lls []float64
	var gs []bool
	if is, ok := s.(interface {
		LogLikelihoods([]Request) ([]float64, []bool, error)
	}); ok {
		var err error
		if lls, gs, err = is.LogLikelihoods(it.Requests); err != nil {
			return Sample{Index: i, Source: it.Source, Gold: it.Gold}, fmt.Errorf("%s: %s: %w", t.Name, it.Source, err)
		}
	} else {
		for _, r := range it.Requests {
			ll, g, err := s.LogLikelihood(r)
			if err != nil {
				return Sample{Index: i, Source: it.Source, Gold: it.Gold}, fmt.Errorf("%s: %s: %w", t.Name, it.Source, err)
			}
			lls, gs = append(lls, ll), append(gs, g)
		}
	}
	return sampleOf(t, i, it, lls, gs), nil
}

// sampleOf is item i's sample from its requests' log-likelihoods and greediness.
func sampleOf(t *Task, i int, it Item, lls []float64, gs []bool) Sample {
	smp := Sample{Index: i, Source: it.Source, Gold: it.Gold, LL: append([]float64(nil), lls...), Greedy: append([]bool(nil), gs...)}
	switch t.Kind {
	case LogLikelihood:
		smp.Acc = b2f(smp.Greedy[0])
	default:
		smp.Acc = b2f(argmax(smp.LL) == it.Gold)
		smp.Greedy = nil
		if t.Norm {
			normed := make([]float64, len(smp.LL))
			for k, r := range it.Requests {
				n := r.Chars
				if n == 0 {
					n = utf8.RuneCountInString(r.Continuation)
				}
				normed[k] = smp.LL[k] / float64(n)
			}
			v := b2f(argmax(normed) == it.Gold)
			smp.AccNorm = &v
		}
	}
	return smp
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// argmax is the first index of the largest value (numpy's argmax: ties go to the first).
func argmax(x []float64) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// meanStderr is lm-eval's mean with mean_stderr: the sample standard deviation (n − 1) over √n.
func meanStderr(x []float64) Metric {
	n := float64(len(x))
	if n == 0 {
		return Metric{Value: math.NaN(), Stderr: math.NaN()}
	}
	var s float64
	for _, v := range x {
		s += v
	}
	mu := s / n
	if n < 2 {
		return Metric{Value: mu, Stderr: math.NaN()}
	}
	var ss float64
	for _, v := range x {
		ss += (v - mu) * (v - mu)
	}
	return Metric{Value: mu, Stderr: math.Sqrt(ss/(n-1)) / math.Sqrt(n)}
}

// perplexityBootstrap is the number of resamples of the perplexity's standard error (lm-eval
// draws 100,000 with CPython's generator; the estimate agrees, not the bits).
const perplexityBootstrap = 1000

// perplexity is lm-eval's perplexity aggregation, exp(−mean log-likelihood) over items, with a
// bootstrap standard error (a fixed seed: the same inputs give the same error).
func perplexity(lls []float64, seed uint64) Metric {
	agg := func(x []float64) float64 {
		var s float64
		for _, v := range x {
			s += v
		}
		return math.Exp(-s / float64(len(x)))
	}
	if len(lls) == 0 {
		return Metric{Value: math.NaN(), Stderr: math.NaN()}
	}
	rng := rand.New(rand.NewPCG(seed, 42))
	vals := make([]float64, perplexityBootstrap)
	buf := make([]float64, len(lls))
	for b := range vals {
		for i := range buf {
			buf[i] = lls[rng.IntN(len(lls))]
		}
		vals[b] = agg(buf)
	}
	sd := meanStderr(vals)
	// The bootstrap's standard error is the standard deviation of the resampled statistic.
	return Metric{Value: agg(lls), Stderr: sd.Stderr * math.Sqrt(float64(len(vals)))}
}

// pickShots draws k distinct examples for an item, never the item itself.
func pickShots(rng *rand.Rand, pool []Item, it Item, k int) []Item {
	idx := rng.Perm(len(pool))
	out := make([]Item, 0, k)
	for _, i := range idx {
		if pool[i].Source == it.Source && it.Source != "" {
			continue
		}
		out = append(out, pool[i])
		if len(out) == k {
			break
		}
	}
	return out
}

// withShots prepends few-shot examples to every request of an item.
func withShots(shots []Item, it Item) Item {
	var b strings.Builder
	for _, sh := range shots {
		r := sh.Requests[sh.Gold]
		b.WriteString(r.Context + r.Continuation + "\n\n")
	}
	out := it
	out.Requests = make([]Request, len(it.Requests))
	for i, r := range it.Requests {
		out.Requests[i] = Request{Context: b.String() + r.Context, Continuation: r.Continuation, Chars: r.Chars}
	}
	return out
}
