package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// LoadOptions describe a load test: Clients concurrent clients, each sending Requests streamed
// completions of Prompt (token ids) with MaxTokens greedy tokens (ignore_eos is not an OpenAI
// field, so a model may stop early at EOS).
type LoadOptions struct {
	Clients, Requests int
	Prompt            []int
	MaxTokens         int
	APIKey            string
}

// LoadReport is what a load test measured, client side.
type LoadReport struct {
	Requests, Failed   int
	FirstError         string
	OutputTokens       int
	Wall               time.Duration
	TTFT, ITL          Percentiles
	RequestsPerSecond  float64
	OutputTokensPerSec float64
}

// Percentiles of a latency distribution.
type Percentiles struct{ P50, P99, Max time.Duration }

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return Percentiles{P50: at(0.5), P99: at(0.99), Max: d[len(d)-1]}
}

func (r LoadReport) String() string {
	s := fmt.Sprintf("%d requests (%d failed) in %v: %.2f requests/s, %.1f output tokens/s; time to first token p50 %v p99 %v; inter-token latency p50 %v p99 %v",
		r.Requests, r.Failed, r.Wall.Round(time.Millisecond), r.RequestsPerSecond, r.OutputTokensPerSec,
		r.TTFT.P50.Round(time.Microsecond), r.TTFT.P99.Round(time.Microsecond), r.ITL.P50.Round(time.Microsecond), r.ITL.P99.Round(time.Microsecond))
	if r.FirstError != "" {
		s += "; first error: " + r.FirstError
	}
	return s
}

// LoadTest runs o against the server at baseURL (http://HOST:PORT) and stops when every
// request has ended or ctx does.
func LoadTest(ctx context.Context, baseURL string, o LoadOptions) LoadReport {
	body, _ := json.Marshal(map[string]any{"prompt": o.Prompt, "max_tokens": o.MaxTokens, "temperature": 0, "stream": true})
	var mu sync.Mutex
	rep := LoadReport{}
	var ttft, itl []time.Duration
	fail := func(err error) {
		mu.Lock()
		rep.Failed++
		if rep.FirstError == "" {
			rep.FirstError = err.Error()
		}
		mu.Unlock()
	}
	client := &http.Client{}
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < o.Clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < o.Requests && ctx.Err() == nil; r++ {
				req, _ := http.NewRequestWithContext(ctx, "POST", baseURL+"/v1/completions", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				if o.APIKey != "" {
					req.Header.Set("Authorization", "Bearer "+o.APIKey)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					fail(err)
					continue
				}
				var gaps []time.Duration
				var first time.Duration
				last, n, done := t0, 0, false
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					line, ok := strings.CutPrefix(sc.Text(), "data: ")
					if !ok {
						continue
					}
					if line == "[DONE]" {
						done = true
						break
					}
					var ch CompletionResponse
					if json.Unmarshal([]byte(line), &ch) != nil || len(ch.Choices) == 0 {
						fail(fmt.Errorf("bad chunk %q", line))
						break
					}
					if ch.Choices[0].Text == "" {
						continue
					}
					now := time.Now()
					if n == 0 {
						first = now.Sub(t0)
					} else {
						gaps = append(gaps, now.Sub(last))
					}
					last = now
					n++
				}
				resp.Body.Close()
				if resp.StatusCode != 200 || !done {
					fail(fmt.Errorf("status %d, stream complete %t", resp.StatusCode, done))
					continue
				}
				mu.Lock()
				rep.Requests++
				rep.OutputTokens += n
				if n > 0 {
					ttft = append(ttft, first)
				}
				itl = append(itl, gaps...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rep.Wall = time.Since(start)
	rep.TTFT, rep.ITL = percentiles(ttft), percentiles(itl)
	if s := rep.Wall.Seconds(); s > 0 {
		rep.RequestsPerSecond = float64(rep.Requests) / s
		rep.OutputTokensPerSec = float64(rep.OutputTokens) / s
	}
	return rep
}
