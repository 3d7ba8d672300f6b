package retrofit

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/serve"
)

// BenchServeOptions describe `dmc bench serve`: for each compression setting, a server on the
// CUDA engine with as many concurrent sequences as fit, loaded over loopback by twice as many
// streaming clients.
type BenchServeOptions struct {
	Model         string
	RandomWeights bool
	CR            string // as bench decode's --cr: vanilla, dmc, N (forced)
	Prompt, Gen   int    // prompt tokens (random ids) and max_tokens of every request
	Requests      int    // per client
	MaxBatch      int    // 0: what fits
	Load          float64
	Seed          uint64
	Timeout       time.Duration
}

// BenchServeRow is one setting's result.
type BenchServeRow struct {
	CR                 string  `json:"cr"`
	MaxBatch           int     `json:"max_concurrent_sequences"`
	Clients            int     `json:"clients"`
	Requests           int     `json:"requests"`
	Failed             int     `json:"failed"`
	FirstError         string  `json:"first_error,omitempty"`
	WallS              float64 `json:"wall_s"`
	RequestsPerSec     float64 `json:"requests_per_s"`
	OutputTokensPerSec float64 `json:"output_tokens_per_s"`
	TTFTp50Ms          float64 `json:"ttft_p50_ms"`
	TTFTp99Ms          float64 `json:"ttft_p99_ms"`
	ITLp50Ms           float64 `json:"itl_p50_ms"`
	ITLp99Ms           float64 `json:"itl_p99_ms"`
	PagesUsedAfter     int     `json:"pool_pages_used_after"`
	PagesTotal         int     `json:"pool_pages_total"`
}

// BenchServeReport is the JSON document of `dmc bench serve`.
type BenchServeReport struct {
	Device  string          `json:"device"`
	Model   string          `json:"model"`
	Weights string          `json:"weights"`
	Prompt  int             `json:"prompt_tokens"`
	Gen     int             `json:"max_tokens"`
	Rows    []BenchServeRow `json:"rows"`
}

// BenchServe runs the serving benchmark on the CUDA engine.
func BenchServe(o BenchServeOptions, progress io.Writer) (*BenchServeReport, error) {
	if progress == nil {
		progress = io.Discard
	}
	if o.Prompt < 1 || o.Gen < 2 || o.Requests < 1 || o.Load <= 0 {
		return nil, fmt.Errorf("--prompt ≥ 1, --gen ≥ 2, --requests ≥ 1 and --load > 0 are needed (got %d, %d, %d, %g)", o.Prompt, o.Gen, o.Requests, o.Load)
	}
	if err := kernels.Available(); err != nil {
		return nil, err
	}
	p, err := planBench(BenchOptions{Model: o.Model, RandomWeights: o.RandomWeights, CR: o.CR, Prompt: o.Prompt, Gen: o.Gen, Seed: o.Seed})
	if err != nil {
		return nil, err
	}
	ctxLen := o.Prompt + o.Gen
	if ctxLen > p.cfg.MaxSeqLen {
		return nil, fmt.Errorf("--prompt %d + --gen %d exceeds the model's context %d", o.Prompt, o.Gen, p.cfg.MaxSeqLen)
	}
	rep := &BenchServeReport{Model: p.cfg.Name, Weights: p.weights, Prompt: o.Prompt, Gen: o.Gen}
	rng := rand.New(rand.NewPCG(o.Seed, 99))
	prompt := make([]int, o.Prompt)
	for i := range prompt {
		prompt[i] = 3 + rng.IntN(p.cfg.VocabSize-3)
	}
	for i, cr := range p.crs {
		opt := p.opts[i]
		fit, err := kernels.FitBatch(p.cfg, opt, cr.Slots(ctxLen))
		if err != nil {
			return nil, err
		}
		opt.MaxBatch = fit
		if o.MaxBatch > 0 {
			opt.MaxBatch = min(fit, o.MaxBatch)
		}
		row, dev, err := benchServeOne(o, p.cfg, p.w, cr, opt, prompt, progress)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cr.Label, err)
		}
		rep.Device = dev
		rep.Rows = append(rep.Rows, row)
		fmt.Fprintf(progress, "%s: %d concurrent sequences, %d clients: %d requests (%d failed), %.2f requests/s, %.0f output tokens/s, TTFT p50 %.0f ms p99 %.0f ms, ITL p50 %.1f ms p99 %.1f ms; pool pages used after: %d of %d\n",
			row.CR, row.MaxBatch, row.Clients, row.Requests, row.Failed, row.RequestsPerSec, row.OutputTokensPerSec,
			row.TTFTp50Ms, row.TTFTp99Ms, row.ITLp50Ms, row.ITLp99Ms, row.PagesUsedAfter, row.PagesTotal)
	}
	return rep, nil
}

func benchServeOne(o BenchServeOptions, cfg model.Config, w *model.Weights, cr BenchCR, opt kernels.Options, prompt []int,
	progress io.Writer) (BenchServeRow, string, error) {
	var e kernels.Engine
	var err error
	if w != nil {
		e, err = kernels.NewEngine(w, opt)
	} else {
		e, err = kernels.NewRandomEngine(cfg, o.Seed, opt)
	}
	if err != nil {
		return BenchServeRow{}, "", err
	}
	defer e.Close()
	mem := e.Memory()
	rows := int64(cfg.NLayers * cfg.NKVHeads)
	b := serve.Backend{Decoder: e, Tokenizer: serve.IDTokenizer{Vocab: cfg.VocabSize}, ModelID: cfg.Name,
		MaxContext: opt.MaxContext, MaxBatch: opt.MaxBatch,
		Pool: &serve.Pool{Total: int64(mem.Pages), Need: func(n int) int64 {
			return rows * int64((cr.Slots(n)+mem.PageTokens-1)/mem.PageTokens)
		}},
		Cache: func() (int64, float64, error) {
			st, err := e.CacheStats()
			return st.Slots, st.CR(), err
		}}
	srv, err := serve.New(b, serve.Options{})
	if err != nil {
		return BenchServeRow{}, "", err
	}
	ctx, stop := context.WithCancel(context.Background())
	addrc, errc := make(chan string, 1), make(chan error, 1)
	go func() { errc <- srv.Run(ctx, "127.0.0.1:0", 10*time.Second, func(a string) { addrc <- a }) }()
	var url string
	select {
	case a := <-addrc:
		url = "http://" + a
	case err := <-errc:
		stop()
		return BenchServeRow{}, "", err
	}
	clients := max(1, int(o.Load*float64(opt.MaxBatch)))
	fmt.Fprintf(progress, "%s: serving %d concurrent sequences (pool %d pages of %d tokens), %d clients × %d requests of %d+%d tokens\n",
		cr.Label, opt.MaxBatch, mem.Pages, mem.PageTokens, clients, o.Requests, len(prompt), o.Gen)
	// Warm-up (first-use costs out of the measurement): one request.
	lctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
	serve.LoadTest(lctx, url, serve.LoadOptions{Clients: 1, Requests: 1, Prompt: prompt, MaxTokens: o.Gen})
	r := serve.LoadTest(lctx, url, serve.LoadOptions{Clients: clients, Requests: o.Requests, Prompt: prompt, MaxTokens: o.Gen})
	cancel()
	stop()
	if err := <-errc; err != nil {
		return BenchServeRow{}, "", err
	}
	st, err := e.CacheStats()
	if err != nil {
		return BenchServeRow{}, "", err
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return BenchServeRow{CR: cr.Label, MaxBatch: opt.MaxBatch, Clients: clients, Requests: r.Requests, Failed: r.Failed, FirstError: r.FirstError,
		WallS: r.Wall.Seconds(), RequestsPerSec: r.RequestsPerSecond, OutputTokensPerSec: r.OutputTokensPerSec,
		TTFTp50Ms: ms(r.TTFT.P50), TTFTp99Ms: ms(r.TTFT.P99), ITLp50Ms: ms(r.ITL.P50), ITLp99Ms: ms(r.ITL.P99),
		PagesUsedAfter: st.PagesUsed, PagesTotal: st.PagesTotal}, e.Device(), nil
}
