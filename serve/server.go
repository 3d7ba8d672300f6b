package serve

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/dmc-project/dmc/model"
)

// Options are a server's settings beyond its backend.
type Options struct {
	// APIKey, when set, is required as "Authorization: Bearer KEY" on /v1 endpoints.
	APIKey string
	// MaxBodyBytes bounds a request body (default 8 MiB).
	MaxBodyBytes int64
	// DefaultMaxTokens is max_tokens when a request omits it (default 16, OpenAI's).
	DefaultMaxTokens int
	// WriteTimeout bounds each write of a response or stream chunk to a client (default 30 s):
	// a client that stops reading is cancelled and its cache released.
	WriteTimeout time.Duration
	// Now and NewID make responses reproducible in tests (defaults: time.Now, random ids).
	Now   func() time.Time
	NewID func(prefix string) string
}

// Server answers the OpenAI-compatible API over one Engine.
type Server struct {
	b        Backend
	e        *Engine
	m        *metrics
	opt      Options
	mux      *http.ServeMux
	draining atomic.Bool
}

// New starts a server's engine on b.
func New(b Backend, opt Options) (*Server, error) {
	if b.Decoder == nil || b.Tokenizer == nil {
		return nil, errors.New("serve: the backend needs a decoder and a tokenizer")
	}
	if b.MaxContext < 2 {
		return nil, fmt.Errorf("serve: the context must hold at least 2 positions (got %d)", b.MaxContext)
	}
	if opt.MaxBodyBytes <= 0 {
		opt.MaxBodyBytes = 8 << 20
	}
	if opt.DefaultMaxTokens <= 0 {
		opt.DefaultMaxTokens = 16
	}
	if opt.WriteTimeout <= 0 {
		opt.WriteTimeout = 30 * time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.NewID == nil {
		opt.NewID = randomID
	}
	s := &Server{b: b, m: newMetrics(), opt: opt, mux: http.NewServeMux()}
	s.e = newEngine(b, s.m)
	s.route("POST", "/v1/completions", "completions", true, s.completions)
	s.route("POST", "/v1/chat/completions", "chat", true, s.chat)
	s.route("GET", "/v1/models", "models", true, s.models)
	s.route("GET", "/health", "health", false, s.health)
	s.mux.Handle("GET /metrics", s.m.handler())
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{Status: 404, Type: "invalid_request_error",
			Message: fmt.Sprintf("no endpoint %s %s: use POST /v1/completions, POST /v1/chat/completions, GET /v1/models, /health or /metrics", r.Method, r.URL.Path)})
	})
	return s, nil
}

func randomID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Drain makes /health answer 503 and refuses new generation requests (503), while running
// ones go on; used on SIGTERM before http.Server.Shutdown.
func (s *Server) Drain() { s.draining.Store(true) }

// Close cancels every request still running, releases their caches and stops the engine.
func (s *Server) Close() { s.e.Close() }

// Load reports the sequences holding a cache and the requests waiting for admission.
func (s *Server) Load() (active, waiting int) { return s.e.Load() }

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(c int) {
	if w.code == 0 {
		w.code = c
	}
	w.ResponseWriter.WriteHeader(c)
}
func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = 200
	}
	return w.ResponseWriter.Write(b)
}
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) route(method, path, name string, auth bool, h func(http.ResponseWriter, *http.Request) error) {
	s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() { s.m.requests.WithLabelValues(name, strconv.Itoa(max(sw.code, 200))).Inc() }()
		if r.Method != method && !(method == "GET" && r.Method == "HEAD") {
			sw.Header().Set("Allow", method)
			writeError(sw, &apiError{Status: 405, Type: "invalid_request_error", Message: fmt.Sprintf("%s %s: use %s", r.Method, path, method)})
			return
		}
		if auth && s.opt.APIKey != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.opt.APIKey)) != 1 {
				writeError(sw, &apiError{Status: 401, Type: "authentication_error", Code: "invalid_api_key",
					Message: "missing or wrong API key: send the header Authorization: Bearer <key given to dmc serve --api-key>"})
				return
			}
		}
		if err := h(sw, r); err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				ae = &apiError{Status: 500, Type: "server_error", Message: err.Error()}
			}
			if sw.code == 0 {
				writeError(sw, ae)
			}
		}
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.Status, map[string]*apiError{"error": e})
}

func (s *Server) readBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opt.MaxBodyBytes))
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return &apiError{Status: 413, Type: "invalid_request_error", Message: fmt.Sprintf("the request body is over %d bytes", mb.Limit)}
		}
		return badRequest("", "reading the request body: %v", err)
	}
	return decodeStrict(body, v)
}

func (s *Server) health(w http.ResponseWriter, _ *http.Request) error {
	if s.draining.Load() {
		writeJSON(w, 503, map[string]string{"status": "draining"})
		return nil
	}
	active, waiting := s.e.Load()
	writeJSON(w, 200, map[string]any{"status": "ok", "running": active, "waiting": waiting})
	return nil
}

func (s *Server) models(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, 200, map[string]any{"object": "list", "data": []map[string]any{{
		"id": s.b.ModelID, "object": "model", "created": 0, "owned_by": "dmc", "max_model_len": s.b.MaxContext}}})
	return nil
}

// request is a validated generation request: its prompts as tokens and how to answer.
type request struct {
	prompts []prompt
	tokens  [][]int
	samp    sampling
	topK    int // < 0: no logprobs
	echo    bool
	chat    bool
	stream  bool
}

func (s *Server) prepare(q *request) error {
	if s.draining.Load() {
		return &apiError{Status: 503, Type: "server_error", Message: "the server is shutting down; retry on another instance"}
	}
	tk := s.b.Tokenizer
	q.tokens = make([][]int, len(q.prompts))
	for i, p := range q.prompts {
		if p.isText {
			q.tokens[i] = tk.Encode(p.text, true, false)
		} else {
			q.tokens[i] = p.tokens
		}
		n, m, c := len(q.tokens[i]), q.samp.maxTokens, s.b.MaxContext
		if n+m > c {
			return badRequest("max_tokens", "prompt %d has %d tokens and max_tokens is %d: %d exceeds the context of %d tokens; shorten the prompt or lower max_tokens", i, n, m, n+m, c)
		}
		if p := s.b.Pool; p != nil && p.Need(n+m) > p.Total {
			return badRequest("max_tokens", "prompt %d with max_tokens needs %d KV pages but the pool has %d: it can never fit; shorten it", i, p.Need(n+m), p.Total)
		}
	}
	return nil
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) error {
	var req CompletionRequest
	if err := s.readBody(w, r, &req); err != nil {
		return err
	}
	samp, err := checkCommon(req.MaxTokens, s.opt.DefaultMaxTokens, req.Temperature, req.TopP, req.N, req.Seed,
		req.PresencePenalty, req.FrequencyPenalty, req.LogitBias, req.Stop)
	if err != nil {
		return err
	}
	if req.BestOf != nil && *req.BestOf != 1 {
		return badRequest("best_of", "best_of must be 1 (got %d)", *req.BestOf)
	}
	if req.Suffix != nil && *req.Suffix != "" {
		return badRequest("suffix", "suffix is not supported")
	}
	q := &request{samp: samp, topK: -1, echo: req.Echo, stream: req.Stream}
	if req.Logprobs != nil {
		if *req.Logprobs < 0 || *req.Logprobs > MaxLogprobs {
			return badRequest("logprobs", "logprobs must be in [0, %d] (got %d)", MaxLogprobs, *req.Logprobs)
		}
		q.topK = *req.Logprobs
	}
	if samp.maxTokens == 0 && !req.Echo {
		return badRequest("max_tokens", "max_tokens is 0 without echo: nothing to return")
	}
	if q.prompts, err = parsePrompt(req.Prompt, s.b.Tokenizer.VocabSize()); err != nil {
		return err
	}
	if err := s.prepare(q); err != nil {
		return err
	}
	return s.answer(w, r, q)
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) error {
	var req ChatRequest
	if err := s.readBody(w, r, &req); err != nil {
		return err
	}
	maxTok := req.MaxTokens
	if req.MaxCompletionTokens != nil {
		maxTok = req.MaxCompletionTokens
	}
	samp, err := checkCommon(maxTok, s.opt.DefaultMaxTokens, req.Temperature, req.TopP, req.N, req.Seed,
		req.PresencePenalty, req.FrequencyPenalty, req.LogitBias, req.Stop)
	if err != nil {
		return err
	}
	if len(req.Messages) == 0 {
		return badRequest("messages", "messages is required (a non-empty list of {role, content})")
	}
	if samp.maxTokens == 0 {
		return badRequest("max_tokens", "max_tokens must be ≥ 1 for a chat completion")
	}
	text, err := ChatTemplate(req.Messages)
	if err != nil {
		return err
	}
	samp.stop = append(samp.stop, chatStop)
	q := &request{prompts: []prompt{{text: text, isText: true}}, samp: samp, topK: -1, chat: true, stream: req.Stream}
	if err := s.prepare(q); err != nil {
		return err
	}
	return s.answer(w, r, q)
}

// result is one prompt's answer.
type result struct {
	text       string
	lp         *Logprobs
	finish     string
	completion int
	err        error
}

// delta is what a stream sends for one prompt: new text, its tokens' logprobs, the end.
type delta struct {
	index  int
	text   string
	lp     *Logprobs
	finish string
}

func (s *Server) answer(w http.ResponseWriter, r *http.Request, q *request) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	id, created := s.opt.NewID(map[bool]string{true: "chatcmpl-", false: "cmpl-"}[q.chat]), s.opt.Now().Unix()
	jobs := make([]*job, len(q.tokens))
	for i, toks := range q.tokens {
		var smp *model.Sampler
		if q.samp.temperature > 0 {
			seed := uint64(time.Now().UnixNano())
			if q.samp.seed != nil {
				seed = uint64(*q.samp.seed)
			}
			smp = model.NewSampler(q.samp.temperature, q.samp.topP, seed+uint64(i))
		}
		jctx, jcancel := context.WithCancel(ctx)
		defer jcancel()
		jobs[i] = newJob(jctx, toks, q.samp.maxTokens, smp, q.topK, q.echo && q.topK >= 0)
		jobs[i].cancel = jcancel
		if err := s.e.Submit(jobs[i]); err != nil {
			return &apiError{Status: 503, Type: "server_error", Message: err.Error()}
		}
	}
	if !q.stream {
		res := s.collectAll(ctx, q, jobs, nil)
		usage := &Usage{}
		for i, rs := range res {
			if rs.err != nil {
				if r.Context().Err() != nil {
					return nil // the client is gone
				}
				return &apiError{Status: 500, Type: "server_error", Message: fmt.Sprintf("prompt %d: %v", i, rs.err)}
			}
			usage.PromptTokens += len(q.tokens[i])
			usage.CompletionTokens += rs.completion
		}
		usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
		if q.chat {
			f := res[0].finish
			writeJSON(w, 200, ChatResponse{ID: id, Object: "chat.completion", Created: created, Model: s.b.ModelID,
				Choices: []ChatChoice{{Index: 0, Message: &ChatMessage{Role: "assistant", Content: res[0].text}, FinishReason: &f}}, Usage: usage})
			return nil
		}
		out := CompletionResponse{ID: id, Object: "text_completion", Created: created, Model: s.b.ModelID, Usage: usage}
		for i, rs := range res {
			f := rs.finish
			out.Choices = append(out.Choices, CompletionChoice{Index: i, Text: rs.text, Logprobs: rs.lp, FinishReason: &f})
		}
		writeJSON(w, 200, out)
		return nil
	}
	// Server-sent events: one chunk per piece of text, then [DONE].
	sse := newSSE(w, s.opt.WriteTimeout, cancel)
	if q.chat {
		if err := sse.send(ChatResponse{ID: id, Object: "chat.completion.chunk", Created: created, Model: s.b.ModelID,
			Choices: []ChatChoice{{Index: 0, Delta: &ChatMessage{Role: "assistant"}}}}); err != nil {
			return nil
		}
	}
	chunk := func(d delta) error {
		var f *string
		if d.finish != "" {
			f = &d.finish
		}
		if q.chat {
			dm := &ChatMessage{Content: d.text}
			return sse.send(ChatResponse{ID: id, Object: "chat.completion.chunk", Created: created, Model: s.b.ModelID,
				Choices: []ChatChoice{{Index: d.index, Delta: dm, FinishReason: f}}})
		}
		return sse.send(CompletionResponse{ID: id, Object: "text_completion", Created: created, Model: s.b.ModelID,
			Choices: []CompletionChoice{{Index: d.index, Text: d.text, Logprobs: d.lp, FinishReason: f}}})
	}
	for _, rs := range s.collectAll(ctx, q, jobs, chunk) {
		if rs.err != nil && r.Context().Err() == nil && !sse.failed() {
			_ = sse.send(map[string]*apiError{"error": {Status: 500, Type: "server_error", Message: rs.err.Error()}})
			return nil
		}
	}
	sse.done()
	return nil
}

// collectAll collects every job's answer concurrently (their sequences run in one batch).
func (s *Server) collectAll(ctx context.Context, q *request, jobs []*job, onDelta func(delta) error) []result {
	res := make([]result, len(jobs))
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Add(1)
		go func() { defer wg.Done(); res[i] = s.collect(ctx, q, i, jobs[i], onDelta) }()
	}
	wg.Wait()
	return res
}

// collect turns one job's events into its answer, calling onDelta (streams) as text becomes
// final: text that may still be the start of a stop sequence is held back.
func (s *Server) collect(ctx context.Context, q *request, index int, j *job, onDelta func(delta) error) result {
	tk := s.b.Tokenizer
	toks := j.tokens
	var res result
	var lp *Logprobs
	if q.topK >= 0 {
		lp = &Logprobs{Tokens: []string{}, TokenLogprobs: []*float64{}, TopLogprobs: []map[string]float64{}, TextOffset: []int{}}
	}
	var text strings.Builder // everything answered: the echoed prompt and the generated text
	offset := 0              // characters so far in lp's token texts
	addTok := func(piece string, sc *scored, prev int) {
		if lp == nil {
			return
		}
		lp.Tokens = append(lp.Tokens, piece)
		lp.TextOffset = append(lp.TextOffset, offset)
		offset += utf8.RuneCountInString(piece)
		if sc == nil {
			lp.TokenLogprobs = append(lp.TokenLogprobs, nil)
			lp.TopLogprobs = append(lp.TopLogprobs, nil)
			return
		}
		v := sc.lp
		lp.TokenLogprobs = append(lp.TokenLogprobs, &v)
		top := map[string]float64{}
		for _, a := range sc.top {
			k := tk.Piece(prev, a.id)
			if old, ok := top[k]; !ok || a.lp > old {
				top[k] = a.lp
			}
		}
		lp.TopLogprobs = append(lp.TopLogprobs, top)
	}
	if q.echo {
		if q.prompts[index].isText {
			text.WriteString(q.prompts[index].text)
		} else {
			text.WriteString(tk.Decode(toks))
		}
	}
	genStart := text.Len() // stop sequences are searched in the generated text only
	longestStop := 0
	for _, st := range q.samp.stop {
		longestStop = max(longestStop, len(st))
	}
	sent := 0 // bytes of text already streamed
	prev := toks[len(toks)-1]
	var pending []int // logprob entries not yet streamed (stream only)
	flush := func(final bool, finish string) error {
		if onDelta == nil {
			return nil
		}
		out := text.String()
		end := len(out)
		if !final {
			end = holdBack(out, genStart, q.samp.stop)
		}
		if end <= sent && finish == "" {
			return nil
		}
		d := delta{index: index, text: out[sent:max(end, sent)], finish: finish}
		if lp != nil && len(pending) > 0 {
			d.lp = &Logprobs{}
			for _, k := range pending {
				d.lp.Tokens = append(d.lp.Tokens, lp.Tokens[k])
				d.lp.TokenLogprobs = append(d.lp.TokenLogprobs, lp.TokenLogprobs[k])
				d.lp.TopLogprobs = append(d.lp.TopLogprobs, lp.TopLogprobs[k])
				d.lp.TextOffset = append(d.lp.TextOffset, lp.TextOffset[k])
			}
			pending = pending[:0]
		}
		sent = max(end, sent)
		return onDelta(d)
	}
	for {
		var ev event
		select {
		case ev = <-j.events:
		case <-ctx.Done():
			res.err = ctx.Err()
			return res
		}
		if ev.echo != nil {
			for i, t := range toks {
				p := -1
				if i > 0 {
					p = toks[i-1]
				}
				var sc *scored
				if i > 0 {
					sc = &ev.echo[i]
				}
				addTok(tk.Piece(p, t), sc, p)
				if lp != nil {
					pending = append(pending, len(lp.Tokens)-1)
				}
			}
			if err := flush(false, ""); err != nil {
				res.err = err
				return res
			}
			continue
		}
		if ev.done {
			if ev.err != nil {
				res.err = ev.err
				return res
			}
			res.finish = ev.reason
			break
		}
		piece := tk.Piece(prev, ev.token)
		res.completion++
		// A stop sequence completed by this piece starts at most longestStop−1 bytes before
		// it; earlier ones were looked for already.
		from := max(genStart, text.Len()-longestStop+1)
		text.WriteString(piece)
		if lp != nil {
			sc := ev.scored
			addTok(piece, &sc, prev)
			pending = append(pending, len(lp.Tokens)-1)
		}
		prev = ev.token
		if cut, ok := findStop(text.String(), from, q.samp.stop); ok {
			all := text.String()[:cut]
			text.Reset()
			text.WriteString(all)
			j.stopped.Store(true)
			j.cancel() // the loop releases its cache at the next step
			res.finish = "stop"
			break
		}
		if err := flush(false, ""); err != nil {
			res.err = err
			return res
		}
	}
	res.text = text.String()
	if lp != nil {
		res.lp = lp
	}
	if err := flush(true, res.finish); err != nil {
		res.err = err
	}
	return res
}

// findStop returns where the first stop sequence starts in text[from:] (an index into text).
func findStop(text string, from int, stops []string) (int, bool) {
	best := -1
	for _, st := range stops {
		if i := strings.Index(text[from:], st); i >= 0 && (best < 0 || from+i < best) {
			best = from + i
		}
	}
	return best, best >= 0
}

// holdBack returns how much of text can be streamed: all but the longest tail of the generated
// part (from on) that is a proper prefix of a stop sequence.
func holdBack(text string, from int, stops []string) int {
	end := len(text)
	for _, st := range stops {
		for k := min(len(st)-1, len(text)-from); k > 0; k-- {
			if strings.HasSuffix(text, st[:k]) {
				end = min(end, len(text)-k)
				break
			}
		}
	}
	for end > from && end < len(text) && !utf8.RuneStart(text[end]) {
		end--
	}
	return end
}

// Run serves s on addr until ctx ends (SIGTERM, Ctrl-C), then drains: /health turns 503, new
// requests are refused, running ones get up to drain to finish, and whatever still runs is
// cancelled and its cache released. ready, when set, is called with the listening address.
func (s *Server) Run(ctx context.Context, addr string, drain time.Duration, ready func(addr string)) error {
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 1 << 20}
	ln, err := listen(addr)
	if err != nil {
		return err
	}
	if ready != nil {
		ready(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		s.Close()
		return err
	case <-ctx.Done():
	}
	s.Drain()
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err = hs.Shutdown(sctx)
	s.Close() // cancels what the drain left running; their handlers then return
	if errors.Is(err, context.DeadlineExceeded) {
		_ = hs.Close()
		err = nil
	}
	if e := <-errc; e != nil && !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	return err
}
