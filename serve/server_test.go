package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/internal/dmctest"
	"github.com/dmc-project/dmc/model"
)

var update = flag.Bool("update", false, "rewrite the golden files")

type fixture struct {
	w   *model.Weights
	tok tokenizer.Tokenizer
}

func stories(t *testing.T) fixture {
	t.Helper()
	p := dmctest.Stories260K(t)
	tok, err := tokenizer.Load(dmctest.AssetPath("tinyllamas-stories260K/tok512.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return fixture{w: model.Convert[float32](p), tok: tok}
}

func vanilla(w *model.Weights) func() (model.KVCache[float32], error) {
	return func() (model.KVCache[float32], error) { return model.NewVanillaCache[float32](w.Config), nil }
}

func compressed(w *model.Weights) func() (model.KVCache[float32], error) {
	cfg := dmc.DefaultConfig()
	cfg.DecisionChannel, cfg.DecisionOffset = 0, 2
	return func() (model.KVCache[float32], error) { return dmc.NewCompressedCache[float32](w.Config, cfg) }
}

// start serves f's model with cache on a loopback test server.
func start(t *testing.T, f fixture, cache func() (model.KVCache[float32], error), maxBatch int, opt Options) (*Server, *httptest.Server) {
	t.Helper()
	b := Backend{Decoder: model.NewCPUDecoder(f.w, cache), Tokenizer: f.tok, ModelID: "stories260K",
		MaxContext: f.w.Config.MaxSeqLen, MaxBatch: maxBatch}
	s, err := New(b, opt)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { hs.Close(); s.Close() })
	return s, hs
}

func post(t *testing.T, url, body string, hdr ...string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// waitIdle waits until no sequence holds a cache (the pool is back to full).
func waitIdle(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, w := s.Load()
		if a == 0 && w == 0 {
			if d, ok := s.b.Decoder.(*model.CPUDecoder); ok && d.Active() != 0 {
				t.Fatalf("the engine is idle but the decoder still holds %d sequences", d.Active())
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d running and %d waiting sequences after 5 s", a, w)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRequestValidation(t *testing.T) {
	f := stories(t)
	_, hs := start(t, f, vanilla(f.w), 2, Options{APIKey: "k"})
	auth := []string{"Authorization", "Bearer k"}
	ctx := f.w.Config.MaxSeqLen
	for _, c := range []struct {
		name, path, body string
		hdr              []string
		code             int
		want             string
	}{
		{"malformed JSON", "/v1/completions", `{"prompt": "a",`, auth, 400, "invalid request body"},
		{"unknown field", "/v1/completions", `{"prompt": "a", "foo": 1}`, auth, 400, `unknown field \"foo\"`},
		{"wrong type", "/v1/completions", `{"prompt": "a", "max_tokens": "ten"}`, auth, 400, `max_tokens`},
		{"negative max_tokens", "/v1/completions", `{"prompt": "a", "max_tokens": -1}`, auth, 400, "max_tokens must be ≥ 0"},
		{"huge max_tokens", "/v1/completions", `{"prompt": "a", "max_tokens": 1000000000}`, auth, 400, fmt.Sprintf("exceeds the context of %d tokens", ctx)},
		{"prompt over the context", "/v1/completions", fmt.Sprintf(`{"prompt": [%s1], "max_tokens": 1}`, strings.Repeat("5,", ctx)), auth, 400, "exceeds the context"},
		{"max_tokens 0 without echo", "/v1/completions", `{"prompt": "a", "max_tokens": 0}`, auth, 400, "without echo"},
		{"token outside the vocabulary", "/v1/completions", `{"prompt": [1, 512]}`, auth, 400, "outside the vocabulary"},
		{"empty token list", "/v1/completions", `{"prompt": [[1, 2], []]}`, auth, 400, "empty token list"},
		{"no prompt", "/v1/completions", `{"max_tokens": 3}`, auth, 400, "prompt is required"},
		{"n > 1", "/v1/completions", `{"prompt": "a", "n": 2}`, auth, 400, "n must be 1"},
		{"temperature", "/v1/completions", `{"prompt": "a", "temperature": 3}`, auth, 400, "temperature must be in [0, 2]"},
		{"logprobs", "/v1/completions", `{"prompt": "a", "logprobs": 50}`, auth, 400, "logprobs must be in [0, 20]"},
		{"five stops", "/v1/completions", `{"prompt": "a", "stop": ["a","b","c","d","e"]}`, auth, 400, "at most 4 stop"},
		{"invalid UTF-8", "/v1/completions", "{\"prompt\": \"\xff\xfe\"}", auth, 400, "not valid UTF-8"},
		{"trailing data", "/v1/completions", `{"prompt": "a"} {}`, auth, 400, "data after the JSON"},
		{"no API key", "/v1/completions", `{"prompt": "a"}`, nil, 401, "missing or wrong API key"},
		{"wrong API key", "/v1/completions", `{"prompt": "a"}`, []string{"Authorization", "Bearer nope"}, 401, "missing or wrong API key"},
		{"chat without messages", "/v1/chat/completions", `{"messages": []}`, auth, 400, "messages is required"},
		{"chat unknown role", "/v1/chat/completions", `{"messages": [{"role": "robot", "content": "x"}]}`, auth, 400, "use system, user or assistant"},
		{"unknown endpoint", "/v1/engines", `{}`, auth, 404, "no endpoint"},
		{"body over the limit", "/v1/completions", `{"prompt": "` + strings.Repeat("a", 9<<20) + `"}`, auth, 413, "over"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, body := post(t, hs.URL+c.path, c.body, c.hdr...)
			if code != c.code || !strings.Contains(string(body), c.want) {
				t.Fatalf("got %d %s, want %d containing %q", code, body, c.code, c.want)
			}
			var e struct {
				Error apiError `json:"error"`
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("not an OpenAI error object: %s", body)
			}
		})
	}
	// GET on a POST endpoint is a JSON 405 too.
	resp, err := http.Get(hs.URL + "/v1/completions")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("GET /v1/completions: %d %s", resp.StatusCode, b)
	}
}

func fixedIDs() Options {
	return Options{Now: func() time.Time { return time.Unix(1700000000, 0) }, NewID: func(p string) string { return p + "test" }}
}

// The stream of a greedy completion, byte for byte (testdata/stream.golden; -update rewrites it).
func TestStreamGolden(t *testing.T) {
	f := stories(t)
	_, hs := start(t, f, vanilla(f.w), 2, fixedIDs())
	for _, c := range []struct{ name, body string }{
		{"stream", `{"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "stream": true}`},
		{"stream_stop", `{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "stream": true, "stop": [" Lily"]}`},
		{"stream_logprobs", `{"prompt": "Once upon a time", "max_tokens": 3, "temperature": 0, "stream": true, "logprobs": 2}`},
		{"chat_stream", `{"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 6, "temperature": 0, "stream": true}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, got := post(t, hs.URL+map[bool]string{true: "/v1/chat/completions", false: "/v1/completions"}[strings.HasPrefix(c.name, "chat")], c.body)
			if code != 200 {
				t.Fatalf("status %d: %s", code, got)
			}
			path := filepath.Join("testdata", c.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./serve -run StreamGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("stream differs from %s:\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

// The stop sequence is cut out of the text, also when it spans tokens, and the non-streamed
// answer equals the streamed text.
func TestStopAndStreamAgree(t *testing.T) {
	f := stories(t)
	_, hs := start(t, f, vanilla(f.w), 2, fixedIDs())
	code, body := post(t, hs.URL+"/v1/completions", `{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "stop": [" Lily"]}`)
	if code != 200 {
		t.Fatal(code, string(body))
	}
	var r CompletionResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.Choices[0].Text, "Lily") || *r.Choices[0].FinishReason != "stop" {
		t.Fatalf("stop not applied: %+v", r.Choices[0])
	}
	_, stream := post(t, hs.URL+"/v1/completions", `{"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0, "stop": [" Lily"], "stream": true}`)
	var text strings.Builder
	for _, line := range strings.Split(string(stream), "\n") {
		if l, ok := strings.CutPrefix(line, "data: "); ok && l != "[DONE]" {
			var ch CompletionResponse
			if err := json.Unmarshal([]byte(l), &ch); err != nil {
				t.Fatal(err)
			}
			text.WriteString(ch.Choices[0].Text)
		}
	}
	if text.String() != r.Choices[0].Text {
		t.Fatalf("streamed %q, answered %q", text.String(), r.Choices[0].Text)
	}
}

// lmEvalLoglikelihood is lm-evaluation-harness's LocalCompletionsAPI.parse_logprobs for one
// choice (lm_eval/models/openai_completions.py): the sum of token_logprobs[ctxlen:-1] and
// whether each of them is the largest of its top_logprobs.
func lmEvalLoglikelihood(c CompletionChoice, ctxlen int) (float64, bool) {
	lps, tops := c.Logprobs.TokenLogprobs[ctxlen:len(c.Logprobs.TokenLogprobs)-1], c.Logprobs.TopLogprobs[ctxlen:len(c.Logprobs.TopLogprobs)-1]
	sum, greedy := 0.0, true
	for i, lp := range lps {
		sum += *lp
		best := -1e300
		for _, v := range tops[i] {
			best = max(best, v)
		}
		if *lp != best {
			greedy = false
		}
	}
	return sum, greedy
}

// Echoed prompt log-probabilities equal dmc eval's (model.Decoder.LogProbs with the same cache)
// bit for bit, with the vanilla and the DMC cache; lm-eval's loglikelihood request, sent as its
// _create_payload builds it, parses to the same sum and greediness.
func TestEchoMatchesEvalAndLMEval(t *testing.T) {
	f := stories(t)
	ctxText, cont := "Once upon a time, there was a little girl named", " Lily"
	ctxToks := f.tok.Encode(ctxText, true, false)
	all := f.tok.Encode(ctxText+cont, true, false)
	if len(all) <= len(ctxToks) {
		t.Fatal("the continuation has no tokens")
	}
	for _, c := range []struct {
		name  string
		cache func(*model.Weights) func() (model.KVCache[float32], error)
	}{{"vanilla", vanilla}, {"dmc", compressed}} {
		t.Run(c.name, func(t *testing.T) {
			_, hs := start(t, f, c.cache(f.w), 4, Options{})
			ref := model.NewCPUDecoder(f.w, c.cache(f.w))
			want, err := ref.LogProbs(all)
			if err != nil {
				t.Fatal(err)
			}
			// The body lm-eval's loglikelihood sends (see testdata/lm_eval_requests.md).
			ids, _ := json.Marshal([][]int{all, ctxToks})
			body := fmt.Sprintf(`{"model": "stories260K", "prompt": %s, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": true}`, ids)
			code, resp := post(t, hs.URL+"/v1/completions", body)
			if code != 200 {
				t.Fatalf("%d %s", code, resp)
			}
			var r CompletionResponse
			if err := json.Unmarshal(resp, &r); err != nil {
				t.Fatal(err)
			}
			ch := r.Choices[0]
			lp := ch.Logprobs
			if len(lp.TokenLogprobs) != len(all)+1 || lp.TokenLogprobs[0] != nil {
				t.Fatalf("%d token logprobs for %d prompt tokens + 1 generated; first %v", len(lp.TokenLogprobs), len(all), lp.TokenLogprobs[0])
			}
			for i := 1; i < len(all); i++ {
				if *lp.TokenLogprobs[i] != want[i-1] {
					t.Fatalf("token %d: served %v, dmc eval %v", i, *lp.TokenLogprobs[i], want[i-1])
				}
			}
			// lm-eval's tokens are context + continuation with max_tokens 1, so its slice
			// [ctxlen:-1] is exactly the continuation.
			got, greedy := lmEvalLoglikelihood(ch, len(ctxToks))
			var sum float64
			for _, x := range want[len(ctxToks)-1:] {
				sum += x
			}
			wantGreedy := true
			pl, _ := ref.PromptLogits(all[:len(all)-1])
			for i := len(ctxToks); i < len(all); i++ {
				if model.Argmax(pl[i-1]) != all[i] {
					wantGreedy = false
				}
			}
			if got != sum || greedy != wantGreedy {
				t.Fatalf("lm-eval would parse (%v, %t), want (%v, %t)", got, greedy, sum, wantGreedy)
			}
			// max_tokens 0 with echo scores the prompt only.
			code, resp = post(t, hs.URL+"/v1/completions", fmt.Sprintf(`{"prompt": %s, "max_tokens": 0, "logprobs": 0, "echo": true}`, ids))
			if code != 200 {
				t.Fatalf("%d %s", code, resp)
			}
			var r0 CompletionResponse
			_ = json.Unmarshal(resp, &r0)
			if n := len(r0.Choices[0].Logprobs.TokenLogprobs); n != len(all) || r0.Usage.CompletionTokens != 0 {
				t.Fatalf("max_tokens 0: %d logprobs, %d completion tokens", n, r0.Usage.CompletionTokens)
			}
		})
	}
}

// lm-eval's generate_until request body, and what parse_generations reads from the answer.
func TestLMEvalGenerateRequest(t *testing.T) {
	f := stories(t)
	_, hs := start(t, f, vanilla(f.w), 4, Options{})
	body := `{"prompt": ["Once upon a time", "Tom had a dog"], "model": "stories260K", "max_tokens": 32, "temperature": 0, "stop": ["\n\n", "."], "seed": 1234}`
	code, resp := post(t, hs.URL+"/v1/completions", body)
	if code != 200 {
		t.Fatalf("%d %s", code, resp)
	}
	var r CompletionResponse
	if err := json.Unmarshal(resp, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Choices) != 2 {
		t.Fatalf("%d choices for 2 prompts", len(r.Choices))
	}
	for i, c := range r.Choices {
		if c.Index != i || c.Text == "" || strings.Contains(c.Text, ".") {
			t.Fatalf("choice %d: %+v", i, c)
		}
	}
}

// A client that goes away mid-stream is cancelled and its cache released; a full batch makes
// the others wait, not fail.
func TestDisconnectReleasesCache(t *testing.T) {
	f := stories(t)
	s, hs := start(t, f, vanilla(f.w), 1, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", hs.URL+"/v1/completions",
		strings.NewReader(`{"prompt": "Once", "max_tokens": 400, "temperature": 0, "stream": true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	for i := 0; i < 3 && sc.Scan(); i++ {
	}
	cancel()
	resp.Body.Close()
	waitIdle(t, s)
	code, body := post(t, hs.URL+"/v1/completions", `{"prompt": "Once", "max_tokens": 4, "temperature": 0}`)
	if code != 200 {
		t.Fatalf("after a disconnect: %d %s", code, body)
	}
	waitIdle(t, s)
}

// Loopback load at twice the batch: no failures, latencies reported, every cache released.
func TestLoad(t *testing.T) {
	f := stories(t)
	s, hs := start(t, f, compressed(f.w), 4, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep := LoadTest(ctx, hs.URL, LoadOptions{Clients: 8, Requests: 3, Prompt: f.tok.Encode("Once upon a time", true, false), MaxTokens: 24})
	t.Log(rep)
	if rep.Failed != 0 || rep.Requests != 24 {
		t.Fatalf("load test: %v", rep)
	}
	waitIdle(t, s)
	_, metrics := get(t, hs.URL+"/metrics")
	for _, m := range []string{"dmc_generation_tokens_total", "dmc_time_to_first_token_seconds_bucket", "dmc_inter_token_latency_seconds_count", "dmc_queue_length 0", "dmc_running_sequences 0"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %q", m)
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// 1,000 idle connections do not stop the server from answering others.
func TestIdleConnections(t *testing.T) {
	f := stories(t)
	_, hs := start(t, f, vanilla(f.w), 2, Options{})
	addr := strings.TrimPrefix(hs.URL, "http://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 1000; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Skipf("opened %d connections: %v", i, err)
		}
		conns = append(conns, c)
	}
	code, body := post(t, hs.URL+"/v1/completions", `{"prompt": "Once", "max_tokens": 4, "temperature": 0}`)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	if code, _ := get(t, hs.URL+"/health"); code != 200 {
		t.Fatalf("health %d", code)
	}
}

// SIGTERM's path: Run drains (health 503, new requests 503) and lets a running request finish.
func TestRunDrains(t *testing.T) {
	f := stories(t)
	b := Backend{Decoder: model.NewCPUDecoder(f.w, vanilla(f.w)), Tokenizer: f.tok, ModelID: "m", MaxContext: 512, MaxBatch: 2}
	s, err := New(b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx, "127.0.0.1:0", 10*time.Second, func(a string) { addrc <- a }) }()
	url := "http://" + <-addrc
	done := make(chan int, 1)
	go func() {
		code, _ := post(t, url+"/v1/completions", `{"prompt": "Once", "max_tokens": 200, "temperature": 0}`)
		done <- code
	}()
	for {
		if a, _ := s.Load(); a > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	stop()
	if code := <-done; code != 200 {
		t.Fatalf("the running request ended with %d during the drain", code)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if a, w := s.Load(); a != 0 || w != 0 {
		t.Fatalf("after Run: %d running, %d waiting", a, w)
	}
}

// recorder is a decoder that remembers the most sequences it held at once and the most
// prompts one Prefill call got (the engine's loop is its only caller).
type recorder struct {
	*model.CPUDecoder
	maxActive, maxPrefill int
}

func (r *recorder) Prefill(prompts [][]int, logits bool) ([]int, []int, [][]float32, error) {
	r.maxPrefill = max(r.maxPrefill, len(prompts))
	ids, next, lg, err := r.CPUDecoder.Prefill(prompts, logits)
	r.maxActive = max(r.maxActive, r.Active())
	return ids, next, lg, err
}

// Admission by pool pages: sequences wait for pages (none fails), and one that can never fit
// is refused with 400 naming the limit.
func TestPoolAdmission(t *testing.T) {
	f := stories(t)
	rec := &recorder{CPUDecoder: model.NewCPUDecoder(f.w, vanilla(f.w))}
	b := Backend{Decoder: rec, Tokenizer: f.tok, ModelID: "m", MaxContext: 512, MaxBatch: 8,
		Pool: &Pool{Total: 3, Need: func(n int) int64 { return int64((n + 63) / 64) }}}
	s, err := New(b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	defer func() { hs.Close(); s.Close() }()
	code, body := post(t, hs.URL+"/v1/completions", `{"prompt": "Once", "max_tokens": 300}`)
	if code != 400 || !strings.Contains(string(body), "can never fit") {
		t.Fatalf("%d %s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Each request takes 1 page (≤ 64 positions): at most 3 run at once, the rest wait.
	rep := LoadTest(ctx, hs.URL, LoadOptions{Clients: 6, Requests: 2, Prompt: f.tok.Encode("Once upon a time", true, false), MaxTokens: 20})
	if rep.Failed != 0 || rep.Requests != 12 {
		t.Fatal(rep)
	}
	waitIdle(t, s)
	if rec.maxActive > 3 || rec.maxActive < 2 {
		t.Errorf("%d sequences held at once with a pool of 3 one-page sequences, want 2 or 3", rec.maxActive)
	}
}

// With a small prefill budget, new requests are admitted over several steps while the running
// ones keep decoding, and every request still completes.
func TestPrefillBudget(t *testing.T) {
	f := stories(t)
	rec := &recorder{CPUDecoder: model.NewCPUDecoder(f.w, vanilla(f.w))}
	b := Backend{Decoder: rec, Tokenizer: f.tok, ModelID: "m", MaxContext: 512, MaxBatch: 8, PrefillTokens: 6}
	s, err := New(b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	defer func() { hs.Close(); s.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prompt := f.tok.Encode("Once upon a time", true, false) // more than half the budget of 6
	rep := LoadTest(ctx, hs.URL, LoadOptions{Clients: 8, Requests: 2, Prompt: prompt, MaxTokens: 16})
	if rep.Failed != 0 || rep.Requests != 16 {
		t.Fatal(rep)
	}
	waitIdle(t, s)
	if len(prompt) <= 3 || rec.maxPrefill != 1 {
		t.Errorf("a %d-token prompt budget admitted %d prompts of %d tokens in one prefill, want 1", 6, rec.maxPrefill, len(prompt))
	}
}

// pipeListener hands out the server ends of in-memory, unbuffered connections (net.Pipe): a
// write blocks until the other side reads, as a full socket buffer does.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *pipeListener) Close() error   { close(l.done); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (l *pipeListener) dial(context.Context, string, string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// A client that never reads its stream is cut off by the write timeout, its cache released,
// and the server keeps answering others.
func TestClientThatNeverReads(t *testing.T) {
	f := stories(t)
	b := Backend{Decoder: model.NewCPUDecoder(f.w, vanilla(f.w)), Tokenizer: f.tok, ModelID: "m", MaxContext: 512, MaxBatch: 2}
	s, err := New(b, Options{WriteTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln := newPipeListener()
	hs := &http.Server{Handler: s.Handler()}
	go hs.Serve(ln)
	defer func() { hs.Close(); s.Close() }()
	stuck, _ := ln.dial(context.Background(), "", "")
	defer stuck.Close()
	body := `{"prompt": "Once", "max_tokens": 400, "temperature": 0, "stream": true}`
	go fmt.Fprintf(stuck, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	deadline := time.Now().Add(5 * time.Second)
	for a, _ := s.Load(); a == 0; a, _ = s.Load() { // the stuck request starts
		if time.Now().After(deadline) {
			t.Fatal("the request never started")
		}
		time.Sleep(time.Millisecond)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: ln.dial}, Timeout: 10 * time.Second}
	resp, err := client.Post("http://pipe/v1/completions", "application/json", strings.NewReader(`{"prompt": "Once", "max_tokens": 4, "temperature": 0}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("another client got %d while one never reads", resp.StatusCode)
	}
	waitIdle(t, s)
	// The stuck stream was cut off: once the write timeout has passed, reading what is left gives
	// a truncated stream (no [DONE]) and the end of the connection.
	time.Sleep(400 * time.Millisecond)
	stuck.SetReadDeadline(time.Now().Add(3 * time.Second))
	rest, err := io.ReadAll(stuck)
	if err != nil {
		t.Fatalf("the server kept the stuck connection open: %v", err)
	}
	if strings.Contains(string(rest), "[DONE]") {
		t.Fatal("the stream to a client that did not read ran to its end")
	}
}
