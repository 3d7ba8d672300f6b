package serve

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/model"
)

// Backend is the model a server runs.
type Backend struct {
	// Decoder is used from one goroutine only (the engine's loop).
	Decoder   model.Decoder
	Tokenizer tokenizer.Tokenizer
	// ModelID names the model in responses and GET /v1/models.
	ModelID string
	// MaxContext is the positions one sequence may use (prompt + generated tokens).
	MaxContext int
	// MaxBatch is the number of sequences decoded together (≥ 1).
	MaxBatch int
	// Cache, when set, reads the KV cache occupancy (slots held, real compression rate) for
	// /metrics; the CUDA engine's pool statistics.
	Cache func() (slots int64, cr float64, err error)
	// PrefillTokens, when > 0, bounds the prompt tokens prefilled between two decode steps, so
	// a burst of new requests delays the running sequences' next token by one bounded prefill
	// rather than by all of them (one prompt is always admitted, whatever its length); 0
	// prefills every admitted request at once (the most throughput).
	PrefillTokens int
	// Pool, when set, admits sequences by KV pool capacity as well as by MaxBatch: a sequence
	// of n positions reserves Need(n) of Total pages until it ends.
	Pool *Pool
}

// Pool is a paged KV cache's admission rule.
type Pool struct {
	Total int64
	Need  func(positions int) int64
}

// PromptLogitser is a decoder that returns the logits after every prompt position in one pass
// (model.CPUDecoder); other decoders are scored by prefilling one token and decoding the rest.
type PromptLogitser interface {
	PromptLogits(tokens []int) ([][]float32, error)
}

// alt is one of the top alternatives at a position.
type alt struct {
	id int
	lp float64
}

// event is what the loop tells a request's handler.
type event struct {
	// echo: the prompt's scores (position i ≥ 1: log p(tokens[i] | tokens[:i]) and the top
	// alternatives there); sent first when the request asked for echo with logprobs.
	echo   []scored
	token  int
	scored scored
	done   bool
	reason string // "length" or "stop" (end of sequence) when done
	err    error
}

type scored struct {
	lp  float64
	top []alt
}

// job is one sequence: a request's prompt (several prompts are several jobs).
type job struct {
	ctx      context.Context
	cancel   context.CancelFunc
	stopped  atomic.Bool // the handler ended it (a stop sequence), not the client
	tokens   []int
	maxNew   int
	sampler  *model.Sampler // nil: greedy
	topK     int            // alternatives per generated token; < 0: no logprobs
	echo     bool           // score the prompt first (with topK alternatives, at least 1)
	events   chan event
	enqueued time.Time

	id        int
	reserved  int64
	started   bool
	last      int
	pos, n    int
	lastEvent time.Time
}

func newJob(ctx context.Context, tokens []int, maxNew int, sampler *model.Sampler, topK int, echo bool) *job {
	// Room for every event the loop can send, so it never blocks on a slow handler.
	return &job{ctx: ctx, cancel: func() {}, tokens: tokens, maxNew: maxNew, sampler: sampler, topK: topK, echo: echo,
		events: make(chan event, maxNew+3)}
}

func (j *job) send(ev event) {
	select {
	case j.events <- ev:
	default: // cannot happen (the channel has room for all events); never block the loop
	}
}

// Engine batches requests continuously over one decoder.
type Engine struct {
	b        Backend
	m        *metrics
	submit   chan *job
	quit     chan struct{}
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex
	reserved int64 // pool pages reserved by admitted sequences (loop goroutine only)
	active   int   // sequences holding a cache
	waiting  int
}

// ErrClosed is returned for requests submitted after Close.
var ErrClosed = errors.New("serve: the server is shutting down")

func newEngine(b Backend, m *metrics) *Engine {
	if b.MaxBatch < 1 {
		b.MaxBatch = 1
	}
	e := &Engine{b: b, m: m, submit: make(chan *job, 1024), quit: make(chan struct{}), done: make(chan struct{})}
	go e.loop()
	return e
}

// Submit queues a job; its events arrive on j.events.
func (e *Engine) Submit(j *job) error {
	j.enqueued = time.Now()
	select {
	case <-e.quit:
		return ErrClosed
	default:
	}
	select {
	case e.submit <- j:
		e.mu.Lock()
		e.waiting++
		e.mu.Unlock()
		return nil
	case <-e.quit:
		return ErrClosed
	case <-j.ctx.Done():
		return j.ctx.Err()
	}
}

// Close cancels every queued and running job, releases their caches and stops the loop.
func (e *Engine) Close() {
	e.once.Do(func() { close(e.quit) })
	<-e.done
}

// Load reports the sequences holding a cache and the jobs waiting for admission.
func (e *Engine) Load() (active, waiting int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.active, e.waiting
}

func (e *Engine) setLoad(active, waiting int) {
	e.mu.Lock()
	e.active, e.waiting = active, waiting
	e.mu.Unlock()
	e.m.active.Set(float64(active))
	e.m.queue.Set(float64(waiting))
}

func (e *Engine) loop() {
	defer close(e.done)
	var active, waiting []*job
	d := e.b.Decoder
	release := func(j *job) {
		if j.started {
			_ = d.Release(j.id)
			j.started = false
		}
		e.reserved -= j.reserved
		j.reserved = 0
	}
	finish := func(j *job, reason string, err error) {
		release(j)
		j.send(event{done: true, reason: reason, err: err})
	}
	defer func() {
		for _, j := range append(active, waiting...) {
			finish(j, "", ErrClosed)
		}
		e.setLoad(0, 0)
	}()
	for {
		if len(active) == 0 && len(waiting) == 0 {
			e.setLoad(0, 0)
			select {
			case j := <-e.submit:
				waiting = append(waiting, j)
			case <-e.quit:
				return
			}
		}
	drain:
		for {
			select {
			case j := <-e.submit:
				waiting = append(waiting, j)
			case <-e.quit:
				return
			default:
				break drain
			}
		}
		alive := func(js []*job) []*job {
			out := js[:0]
			for _, j := range js {
				if j.ctx.Err() != nil {
					finish(j, "", j.ctx.Err())
					if !j.stopped.Load() {
						e.m.cancelled.Inc()
					}
					continue
				}
				out = append(out, j)
			}
			return out
		}
		active, waiting = alive(active), alive(waiting)
		var admit []*job
		budget := e.b.PrefillTokens
		if budget <= 0 {
			budget = math.MaxInt
		}
		for len(waiting) > 0 && len(active)+len(admit) < e.b.MaxBatch {
			j := waiting[0]
			if len(admit) > 0 && len(j.tokens) > budget {
				break // the next step prefills it
			}
			budget -= len(j.tokens)
			if p := e.b.Pool; p != nil {
				need := p.Need(len(j.tokens) + j.maxNew)
				if e.reserved+need > p.Total {
					break // waits for pages; first come, first served
				}
				j.reserved = need
				e.reserved += need
			}
			admit = append(admit, j)
			waiting = waiting[1:]
		}
		e.setLoad(len(active)+len(admit), len(waiting))
		var pre []*job
		for _, j := range admit {
			e.m.queueWait.Observe(time.Since(j.enqueued).Seconds())
			if j.echo {
				sc, err := scorePrompt(d, j.tokens, max(j.topK, 1))
				if err != nil {
					finish(j, "", err)
					continue
				}
				j.send(event{echo: sc})
			}
			if j.maxNew == 0 {
				finish(j, "length", nil)
				continue
			}
			pre = append(pre, j)
		}
		if len(pre) > 0 {
			prompts := make([][]int, len(pre))
			logits := false
			for i, j := range pre {
				prompts[i] = j.tokens
				logits = logits || j.needsLogits()
			}
			ids, next, lg, err := d.Prefill(prompts, logits)
			if err != nil {
				for _, j := range pre {
					finish(j, "", fmt.Errorf("prefill: %w", err))
				}
			} else {
				for i, j := range pre {
					j.id, j.started, j.pos = ids[i], true, len(j.tokens)
					e.m.promptTokens.Add(float64(len(j.tokens)))
					var l []float32
					if lg != nil {
						l = lg[i]
					}
					if e.emit(j, next[i], l, finish) {
						active = append(active, j)
					}
				}
			}
		}
		if len(active) == 0 {
			continue
		}
		ids, toks := make([]int, len(active)), make([]int, len(active))
		logits := false
		for i, j := range active {
			ids[i], toks[i] = j.id, j.last
			logits = logits || j.needsLogits()
		}
		start := time.Now()
		next, lg, err := d.Decode(ids, toks, logits)
		if err != nil {
			for _, j := range active {
				finish(j, "", fmt.Errorf("decode: %w", err))
			}
			active = active[:0]
			continue
		}
		e.m.stepSeconds.Observe(time.Since(start).Seconds())
		kept := active[:0]
		for i, j := range active {
			j.pos++
			var l []float32
			if lg != nil {
				l = lg[i]
			}
			if e.emit(j, next[i], l, finish) {
				kept = append(kept, j)
			}
		}
		active = kept
		e.observeCache()
	}
}

func (j *job) needsLogits() bool { return j.sampler != nil || j.topK >= 0 }

// emit picks the job's next token (greedy next, or sampled from logits), sends it and reports
// whether the job goes on.
func (e *Engine) emit(j *job, greedy int, logits []float32, finish func(*job, string, error)) bool {
	t := greedy
	if j.sampler != nil {
		t = model.Sample(j.sampler, logits)
	}
	now := time.Now()
	if j.n == 0 {
		e.m.ttft.Observe(now.Sub(j.enqueued).Seconds())
	} else {
		e.m.itl.Observe(now.Sub(j.lastEvent).Seconds())
	}
	j.lastEvent = now
	j.n++
	tk := e.b.Tokenizer
	if t == tk.EOS() || t == tk.BOS() {
		finish(j, "stop", nil)
		return false
	}
	ev := event{token: t}
	if j.topK >= 0 {
		ev.scored = scoreAt(logits, t, j.topK)
	}
	j.send(ev)
	e.m.genTokens.Inc()
	j.last = t
	if j.n >= j.maxNew || j.pos+1 >= e.b.MaxContext {
		finish(j, "length", nil)
		return false
	}
	return true
}

func (e *Engine) observeCache() {
	if e.b.Cache == nil {
		return
	}
	if slots, cr, err := e.b.Cache(); err == nil {
		e.m.slots.Set(float64(slots))
		e.m.cr.Set(cr)
	}
}

// scoreAt is token t's log-probability under logits and the k most likely alternatives, each
// computed as model.LogSoftmaxAt does (so echoed scores equal dmc eval's bit for bit, and the
// chosen token's score equals its entry among the alternatives).
func scoreAt(logits []float32, t, k int) scored {
	if len(logits) == 0 {
		return scored{lp: math.NaN()}
	}
	m := float64(logits[model.Argmax(logits)])
	var s float64
	for _, l := range logits {
		s += math.Exp(float64(l) - m)
	}
	logS := math.Log(s)
	lp := func(i int) float64 { return float64(logits[i]) - m - logS }
	out := scored{lp: lp(t)}
	if k > 0 {
		for _, i := range topIndices(logits, k) {
			out.top = append(out.top, alt{id: i, lp: lp(i)})
		}
	}
	return out
}

// scorePrompt scores tokens[1:] given their prefixes with the decoder's real cache.
func scorePrompt(d model.Decoder, tokens []int, k int) ([]scored, error) {
	out := make([]scored, len(tokens))
	if len(tokens) < 2 {
		return out, nil
	}
	if pl, ok := d.(PromptLogitser); ok {
		all, err := pl.PromptLogits(tokens[:len(tokens)-1])
		if err != nil {
			return nil, err
		}
		for i := 1; i < len(tokens); i++ {
			out[i] = scoreAt(all[i-1], tokens[i], k)
		}
		return out, nil
	}
	ids, _, logits, err := d.Prefill([][]int{tokens[:1]}, true)
	if err != nil {
		return nil, err
	}
	defer d.Release(ids...)
	for i := 1; i < len(tokens); i++ {
		out[i] = scoreAt(logits[0], tokens[i], k)
		if i+1 < len(tokens) {
			if _, logits, err = d.Decode(ids, tokens[i:i+1], true); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// topIndices returns the indices of the k largest logits, largest first (the lower index first
// on ties), in O(len·k).
func topIndices(logits []float32, k int) []int {
	k = min(k, len(logits))
	top := make([]int, 0, k+1)
	for i, l := range logits {
		if len(top) == k && l <= logits[top[k-1]] {
			continue
		}
		at := sort.Search(len(top), func(a int) bool { return logits[top[a]] < l })
		top = append(top, 0)
		copy(top[at+1:], top[at:])
		top[at] = i
		if len(top) > k {
			top = top[:k]
		}
	}
	return top
}
