package retrofit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/eval/tasks"
	"github.com/dmc-project/dmc/internal/atomicfile"
)

// EvalSpec is what Evaluate measures (the flags of `dmc eval`).
type EvalSpec struct {
	Model     string
	Tokenizer string
	Data      string
	Split     string
	Tasks     string // comma-separated: ppl, channels, and benchmarks (eval/tasks)
	JSON      string // also write the report here
	Cache     string // auto, vanilla, dmc, or a training-free policy (window, streaming, h2o, tova)
	// KVBudget (slots per layer and KV head) or CR (a budget of the context over CR) sizes a
	// training-free policy.
	KVBudget  int
	CR        float64
	SeqLen    int
	MaxTokens int
	Separator string
	// TextField (.jsonl) and TextColumn (Parquet, Arrow, HF datasets) name the text to tokenise.
	TextField, TextColumn string
	// Benchmarks: the data folder (default $DMC_EVAL_DATA), few-shot examples, the first Limit
	// items only (0: all), the few-shot seed, and a JSONL file of every scored item.
	DataDir    string
	NumFewShot int
	Limit      int
	Seed       uint64
	LogSamples string
	// Device scores perplexity and the benchmark tasks on "cpu" (default) or "cuda" (the CUDA
	// engine, Batch sequences at a time); the training-free policies and the channel ablation
	// run on the CPU.
	Device string
	Batch  int
	// RandomWeights evaluates Model (a preset or config) with random weights drawn on the GPU,
	// and ForceCR (> 1) forces the DMC cache's merges to that rate: the throughput of scoring
	// a large model (benchmark tasks on CUDA only; the accuracies mean nothing).
	RandomWeights bool
	ForceCR       int
	// DecisionOffset, when set, replaces a DMC model's decision offset (what dmc export
	// --calibrate-cr tunes): every hard decision shifts, trading compression for quality.
	DecisionOffset *float64
}

// EvalHooks receive progress: Start before each task, PPL with tokens scored so far, Channel
// after each channel of the ablation. Any may be nil.
type EvalHooks struct {
	Start   func(what string)
	PPL     func(tokens int)
	Channel func(channel int, r *eval.PPLResult)
	Items   func(done, total int) // benchmark items scored
	// Warn hears notes about the model, such as a corrupt latest checkpoint of a run skipped
	// for an older one; nil discards them.
	Warn io.Writer
}

// EvalReport is the JSON written by `dmc eval --json`.
type EvalReport struct {
	Model string           `json:"model"`
	Data  string           `json:"data"`
	Cache string           `json:"cache"`
	DMC   *dmc.Config      `json:"dmc,omitempty"`
	Evict *dmc.EvictConfig `json:"evict,omitempty"` // a training-free policy and its budget
	PPL   *eval.PPLResult  `json:"ppl_result"`
	// Flattened headline numbers for scripts.
	Perplexity float64     `json:"ppl"`
	Tokens     int         `json:"tokens"`
	CR         float64     `json:"cr"`
	CRPerLayer []float64   `json:"cr_per_layer"`
	CRPerHead  [][]float64 `json:"cr_per_head"`
	// Channels is the --tasks channels result.
	Channels *eval.ChannelAblationResult `json:"channels,omitempty"`
	// HeadDim is the model's head dimension (for printing the channel table).
	HeadDim int `json:"-"`
	// Benchmarks are the downstream tasks' results in lm-evaluation-harness's shape; with
	// benchmarks, --json holds this document (and the ppl task as one of its results).
	Benchmarks       *tasks.Report   `json:"-"`
	BenchmarkResults []*tasks.Result `json:"-"`
}

// Evaluate runs the tasks of spec on its model and data with the chosen cache.
func Evaluate(ctx context.Context, spec EvalSpec, hooks EvalHooks) (*EvalReport, error) {
	builtin, bench, err := splitTasks(spec.Tasks)
	if err != nil {
		return nil, err
	}
	if spec.RandomWeights && (len(builtin) > 0 || len(bench) == 0 || spec.Device != "cuda") {
		return nil, fmt.Errorf("--random-weights measures benchmark scoring on the GPU: give --device cuda and benchmark --tasks only (not ppl or channels)")
	}
	if d := spec.Device; d != "" && d != "cpu" && d != "cuda" {
		return nil, fmt.Errorf("unknown --device %q: use cpu or cuda", d)
	}
	if (builtin["ppl"] || builtin["channels"]) && spec.Data == "" {
		return nil, fmt.Errorf("--tasks ppl and channels need --data (held-out text or shards)")
	}
	var m *Model
	if spec.RandomWeights {
		if spec.ForceCR > 1 && spec.Cache != "dmc" {
			return nil, fmt.Errorf("--force-cr %d forces DMC merges: add --cache dmc", spec.ForceCR)
		}
		if spec.Tokenizer == "" {
			return nil, fmt.Errorf("--random-weights needs --tokenizer (e.g. the Llama 2 tokenizer.model for llama2-7b)")
		}
		tok, err := tokenizer.Load(spec.Tokenizer)
		if err != nil {
			return nil, err
		}
		if m, err = RandomModel(spec.Model, tok, spec.Tokenizer, RandomWeights{Seed: spec.Seed, ForceCR: spec.ForceCR}); err != nil {
			return nil, err
		}
	} else {
		if spec.ForceCR > 1 {
			return nil, fmt.Errorf("--force-cr is for --random-weights benchmarks only")
		}
		if m, err = LoadModel(spec.Model, LoadOptions{Tokenizer: spec.Tokenizer, NeedTokenizer: len(bench) > 0, Warn: hooks.Warn}); err != nil {
			return nil, err
		}
	}
	cfg := m.Weights.Config
	if spec.DecisionOffset != nil {
		if m.DMC == nil {
			return nil, fmt.Errorf("--decision-offset shifts a DMC model's decisions; %s is not a DMC model", m.Source)
		}
		c := *m.DMC
		c.DecisionOffset = *spec.DecisionOffset
		m.DMC = &c
	}
	if builtin["channels"] && m.DMC != nil {
		return nil, fmt.Errorf("--tasks channels measures which channel a retrofit should repurpose, so it needs the base model; %s is already a DMC model (decision channel %d)", m.Source, m.DMC.Channel(cfg.HeadDim()))
	}
	var ds *data.Dataset
	if spec.Data != "" {
		d, cleanup, err := OpenEvalDataWith(spec.Data, EvalDataOptions{Split: spec.Split, Separator: spec.Separator,
			TokenizerPath: m.TokenizerPath, Vocab: cfg.VocabSize, TextField: spec.TextField, TextColumn: spec.TextColumn})
		defer cleanup()
		if err != nil {
			return nil, err
		}
		ds = d
	}
	rep := &EvalReport{Model: m.Source, Data: spec.Data, HeadDim: cfg.HeadDim()}
	opts := eval.PPLOptions{SeqLen: spec.SeqLen, MaxTokens: spec.MaxTokens}
	if builtin["ppl"] {
		co := spec.cacheOptions(cfg.MaxSeqLen)
		if spec.CR > 0 && spec.KVBudget == 0 && spec.Cache != "vanilla" && spec.Cache != "dmc" && spec.Cache != "auto" {
			// Solve the budget on the very sequences scored, so the real CR matches --cr.
			if co.Lengths, err = eval.SequenceLengths(ds.Documents(), co.Context, spec.MaxTokens); err != nil {
				return nil, err
			}
		}
		cache, err := m.CacheWith(spec.Cache, co)
		if err != nil {
			return nil, err
		}
		if hooks.Start != nil {
			hooks.Start(fmt.Sprintf("evaluating %s on %s (%s cache)", m.Source, spec.Data, cache.Name))
		}
		opts.Progress = hooks.PPL
		res, err := Perplexity(ctx, m, cache, ds.Documents(), opts, spec.Device, spec.Batch)
		if err != nil {
			return nil, err
		}
		rep.setPPL(res, cache)
	}
	if builtin["channels"] {
		if hooks.Start != nil {
			hooks.Start(fmt.Sprintf("removing each of the %d head channels of q and k in turn from %s on %s", cfg.HeadDim(), m.Source, spec.Data))
		}
		opts.Progress = nil
		progress := hooks.Channel
		if progress == nil {
			progress = func(int, *eval.PPLResult) {}
		}
		res, err := eval.ChannelAblation(ctx, m.Weights, ds.Documents, opts, progress)
		if err != nil {
			return nil, err
		}
		rep.Channels = res
		if !builtin["ppl"] {
			rep.setPPL(res.Base, Cache{Name: "vanilla"})
		}
	}
	if len(bench) > 0 {
		// Benchmark items are short and of every length: --cr compresses each of them by CR.
		co := spec.cacheOptions(cfg.MaxSeqLen)
		co.Proportional = true
		cache, err := m.CacheWith(spec.Cache, co)
		if err != nil {
			return nil, err
		}
		if err := runBenchmarks(ctx, m, cache, bench, spec, hooks, rep); err != nil {
			return nil, err
		}
	}
	if spec.JSON != "" {
		var doc any = rep
		if rep.Benchmarks != nil {
			if rep.PPL != nil {
				rep.Benchmarks.Results["ppl"] = map[string]any{"alias": "ppl", "perplexity,none": rep.Perplexity, "tokens,none": rep.Tokens, "cr,none": rep.CR}
			}
			doc = rep.Benchmarks
			if err := writeBenchmarkMarkdown(spec.JSON, rep.BenchmarkResults); err != nil {
				return nil, err
			}
		}
		b, _ := json.MarshalIndent(doc, "", "  ")
		if err := atomicfile.Write(spec.JSON, append(b, '\n')); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

// Perplexity scores docs with m and cache on device: "cuda" runs the CUDA engine, batch
// sequences decoded together (eval.PerplexityOn); "cpu", "" and the training-free policies,
// which only the CPU has, run eval.Perplexity on every core.
func Perplexity(ctx context.Context, m *Model, cache Cache, docs iter.Seq2[[]int32, error], opts eval.PPLOptions, device string, batch int) (*eval.PPLResult, error) {
	cfg := m.Weights.Config
	if device != "cuda" || cache.Evict != nil {
		return eval.Perplexity(ctx, m.Weights, cache.Factory(cfg), docs, opts)
	}
	seqLen := cfg.MaxSeqLen
	if opts.SeqLen > 0 {
		seqLen = min(seqLen, opts.SeqLen)
	}
	dec, err := NewBatchDecoder(m, cache, "cuda", seqLen, max(1, batch))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	return eval.PerplexityOn(ctx, dec, cfg, docs, opts, batch)
}

// cacheOptions sizes a training-free policy: the budget given, or the context over CR.
func (spec EvalSpec) cacheOptions(maxSeq int) CacheOptions {
	ctx := maxSeq
	if spec.SeqLen > 0 {
		ctx = min(ctx, spec.SeqLen)
	}
	return CacheOptions{Budget: spec.KVBudget, CR: spec.CR, Context: ctx}
}

func (r *EvalReport) setPPL(res *eval.PPLResult, c Cache) {
	r.Cache, r.PPL, r.Perplexity, r.Tokens = c.Name, res, res.PPL, res.Tokens
	r.CR, r.CRPerLayer, r.CRPerHead = res.CR, res.CRPerLayer, res.CRPerHead
	r.DMC, r.Evict = c.DMC, c.Evict
}
