package retrofit

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/eval/tasks"
	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/model"
)

// DefaultEvalDataDir is where the benchmark files are looked for without --data-dir:
// $DMC_EVAL_DATA.
func DefaultEvalDataDir() string { return os.Getenv("DMC_EVAL_DATA") }

// splitTasks separates ppl/channels from the downstream benchmark names, refusing unknown ones.
func splitTasks(list string) (builtin map[string]bool, bench []*tasks.Task, err error) {
	builtin = map[string]bool{}
	for _, t := range strings.Split(list, ",") {
		switch t = strings.TrimSpace(t); t {
		case "":
		case "ppl", "channels":
			builtin[t] = true
		default:
			task, err := tasks.Lookup(t)
			if err != nil {
				return nil, nil, fmt.Errorf("%w, ppl and channels", err)
			}
			bench = append(bench, task)
		}
	}
	if len(builtin) == 0 && len(bench) == 0 {
		return nil, nil, fmt.Errorf("--tasks is empty: give ppl, channels or benchmarks (%s)", strings.Join(tasks.Names(), ", "))
	}
	return builtin, bench, nil
}

// runBenchmarks scores the downstream tasks with the model's real cache on the CPU and fills
// rep.Benchmarks (lm-eval's results shape).
func runBenchmarks(ctx context.Context, m *Model, cache Cache, bench []*tasks.Task, spec EvalSpec, hooks EvalHooks, rep *EvalReport) error {
	if m.Tokenizer == nil {
		return fmt.Errorf("benchmarks need the model's tokenizer: pass --tokenizer")
	}
	root := spec.DataDir
	if root == "" {
		root = DefaultEvalDataDir()
	}
	if root == "" {
		return fmt.Errorf("benchmarks need their data: pass --data-dir (a folder laid out as ../shared/assets: piqa/, hellaswag/, eval-llmfoundry/, mmlu/) or set $DMC_EVAL_DATA")
	}
	device, batch := cmp.Or(spec.Device, "cpu"), max(1, spec.Batch)
	if device != "cpu" && device != "cuda" {
		return fmt.Errorf("unknown --device %q: use cpu or cuda", device)
	}
	dec, err := NewBatchDecoder(m, cache, device, m.Weights.Config.MaxSeqLen, batch)
	if err != nil {
		return err
	}
	defer dec.Close()
	var results []*tasks.Result
	total := map[string]int{}
	var samples *os.File
	if spec.LogSamples != "" {
		if samples, err = os.Create(spec.LogSamples); err != nil {
			return err
		}
		defer samples.Close()
	}
	for _, t := range bench {
		if err := ctx.Err(); err != nil {
			return err
		}
		items, shots, err := t.Load(root)
		if err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
		total[t.Name] = len(items)
		if hooks.Start != nil {
			n := len(items)
			if spec.Limit > 0 {
				n = min(n, spec.Limit)
			}
			hooks.Start(fmt.Sprintf("%s: %d items, %d-shot (%s cache)", t.Name, n, spec.NumFewShot, cache.Name))
		}
		opts := tasks.Options{NumFewShot: spec.NumFewShot, Limit: spec.Limit, Seed: spec.Seed, Progress: hooks.Items, Context: ctx}
		ds := tasks.DecoderScorer{Dec: dec, Tok: m.Tokenizer, MaxLen: m.Weights.Config.MaxSeqLen, Greedy: t.Kind == tasks.LogLikelihood}
		taskDec := dec
		if cache.Evict != nil && cache.Evict.Ratio > 0 {
			// A growing budget of ⌈t/r⌉ slots compresses short items by less than r: solve r
			// on this task's sequences so that its real CR is the one asked for.
			taskCache, err := matchTaskCR(ds, t, items, shots, opts, cache, spec.CR)
			if err != nil {
				return err
			}
			if taskDec, err = NewBatchDecoder(m, taskCache, device, m.Weights.Config.MaxSeqLen, batch); err != nil {
				return err
			}
			defer taskDec.Close()
			ds.Dec = taskDec
			if hooks.Start != nil {
				hooks.Start(fmt.Sprintf("%s: %s", t.Name, taskCache.Evict))
			}
		}
		var sc tasks.Scorer = ds
		var slots *tasks.SlotTally
		if cache.DMC != nil || cache.Evict != nil {
			slots = &tasks.SlotTally{} // the compressed cache's real CR on the task
		}
		if device == "cuda" {
			// The engine batches: many sequences prefilled together and decoded in lockstep.
			sc = tasks.BatchScorer{DecoderScorer: ds, Batch: batch, Slots: slots}
		} else if slots != nil {
			cfg := m.Weights.Config
			taskDec.cpu.Scored = func(c model.KVCache[float32], tokens int) { slots.Add(tokens, model.RowSlotsOf(cfg, c)) }
		}
		res, err := tasks.Score(t, items, shots, sc, opts)
		if err != nil {
			return err
		}
		if slots != nil {
			res.CR = slots.CR()
		}
		results = append(results, res)
		if samples != nil {
			enc := json.NewEncoder(samples)
			for _, s := range res.Samples {
				if err := enc.Encode(struct {
					Task string `json:"task"`
					tasks.Sample
				}{t.Name, s}); err != nil {
					return err
				}
			}
		}
	}
	cfg := map[string]any{"model": m.Source, "cache": cache.Name, "num_fewshot": spec.NumFewShot, "limit": spec.Limit, "seed": spec.Seed,
		"data_dir": absPath(root)}
	if cache.DMC != nil {
		cfg["dmc"] = cache.DMC
	}
	if cache.Evict != nil {
		cfg["evict"] = cache.Evict
	}
	if rep.PPL != nil {
		cfg["real_cr"] = rep.CR // measured by the ppl task with the same cache
	}
	rep.Benchmarks = tasks.NewReport(results, total, cfg)
	rep.BenchmarkResults = results
	return nil
}

// matchTaskCR sizes a proportional eviction cache for task t so that its real CR on the task's
// sequences (as scoring will put them in the cache) is target, or just above it.
func matchTaskCR(ds tasks.DecoderScorer, t *tasks.Task, items, shots []tasks.Item, o tasks.Options, cache Cache, target float64) (Cache, error) {
	prepared, err := tasks.Prepare(t, items, shots, o)
	if err != nil {
		return Cache{}, err
	}
	lengths, err := ds.CachedLengths(prepared)
	if err != nil {
		return Cache{}, fmt.Errorf("%s: %w", t.Name, err)
	}
	ec, _, err := cache.Evict.RatioFor(lengths, target)
	if err != nil {
		return Cache{}, err
	}
	// When the budget's floor cannot reach target (items shorter than the floor), ec is the
	// most it can compress; the task's reported real CR says so.
	cache.Evict = &ec
	return cache, nil
}

// writeBenchmarkMarkdown writes the lm-eval-style table next to a JSON report.
func writeBenchmarkMarkdown(jsonPath string, results []*tasks.Result) error {
	var b strings.Builder
	if err := tasks.WriteMarkdown(&b, results); err != nil {
		return err
	}
	p := strings.TrimSuffix(jsonPath, filepath.Ext(jsonPath)) + ".md"
	return atomicfile.Write(p, []byte(b.String()))
}

// CompareRow is one cache policy of a comparison.
type CompareRow struct {
	Cache      string                    `json:"cache"`
	Perplexity float64                   `json:"ppl,omitempty"`
	CR         float64                   `json:"real_cr,omitempty"`
	Tasks      map[string]map[string]any `json:"results,omitempty"` // lm-eval's results per benchmark
}

// Compare runs spec once per cache policy (spec.Cache first when it is not among them), each
// training-free policy sized by spec.KVBudget or spec.CR, and returns one row per policy: the
// same tasks at matched budget, so the real compression rates can be compared with a DMC
// model's (pass its real CR as --cr).
func Compare(ctx context.Context, spec EvalSpec, policies []string, hooks EvalHooks) ([]CompareRow, error) {
	jsonPath := spec.JSON
	spec.JSON = ""
	var rows []CompareRow
	for _, p := range policies {
		s := spec
		s.Cache = strings.TrimSpace(p)
		if hooks.Start != nil {
			hooks.Start("cache " + s.Cache)
		}
		rep, err := Evaluate(ctx, s, hooks)
		if err != nil {
			return rows, fmt.Errorf("--compare %s: %w", s.Cache, err)
		}
		row := CompareRow{Cache: s.Cache}
		if rep.PPL != nil {
			row.Perplexity, row.CR = rep.Perplexity, rep.CR
		}
		if rep.Benchmarks != nil {
			row.Tasks = rep.Benchmarks.Results
		}
		rows = append(rows, row)
	}
	if jsonPath != "" {
		b, _ := json.MarshalIndent(map[string]any{"rows": rows, "model": spec.Model, "kv_budget": spec.KVBudget, "cr": spec.CR, "tasks": spec.Tasks}, "", "  ")
		if err := atomicfile.Write(jsonPath, append(b, '\n')); err != nil {
			return rows, err
		}
	}
	return rows, nil
}
