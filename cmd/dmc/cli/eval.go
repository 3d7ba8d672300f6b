package cli

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/eval/tasks"
	"github.com/dmc-project/dmc/retrofit"
)

// EvalOptions are the flags of `dmc eval`.
type EvalOptions struct {
	Model     string
	Tokenizer string
	Data      string
	Split     string
	Tasks     string
	JSON      string
	Cache     string
	KVBudget  int
	CR        float64
	Compare   string
	SeqLen    int
	Device    string
	Batch     int
	Random    bool
	ForceCR   int
	MaxTokens int
	Separator string
	// DecisionOffset overrides a DMC model's (when the flag is given: offsetSet).
	DecisionOffset float64
	offsetSet      bool
	// TextField (.jsonl) and TextColumn (Parquet, Arrow, HF datasets) name the text to tokenise.
	TextField, TextColumn string
	// Benchmarks.
	DataDir    string
	NumFewShot int
	Limit      int
	Seed       uint64
	LogSamples string
}

func init() { register(newEvalCmd) }

func newEvalCmd(streams *IO) *cobra.Command {
	o := &EvalOptions{}
	cmd := &cobra.Command{
		Use:   "eval",
		Short: "Held-out perplexity with the real (compressed) KV cache, and the real compression rate",
		Long: `Decodes every held-out document with the model's KV cache (the DMC compressed cache for
DMC models, as in serving) and reports perplexity and the real compression rate
(tokens / cache slots) overall, per layer and per KV head.

Benchmarks (--tasks piqa,hellaswag,arc_easy,arc_challenge,winogrande,boolq,lambada_openai,
openbookqa,copa,siqa,mmlu) are scored as lm-evaluation-harness scores them: the log-likelihood
of each continuation given its context with the model's real cache; acc (argmax), acc_norm
(divided by the choice's length in characters), LAMBADA accuracy and perplexity, MMLU with
the standard prompt and dev-split shots, lm-eval's standard errors. --json then holds lm-eval's
results shape (a Markdown table is written next to it). The files are read as users download
them, from --data-dir (default $DMC_EVAL_DATA), laid out as ../shared/assets:
  piqa/valid.jsonl + piqa/valid-labels.lst (original PIQA), else eval-llmfoundry/piqa.jsonl
  hellaswag/hellaswag_val.jsonl (original) or hellaswag/hellaswag_val_full.txt[.bz2] (6-line text)
  eval-llmfoundry/{arc_easy,arc_challenge,winogrande,boolq,lambada_openai,openbook_qa,copa,siqa}.jsonl
  mmlu/{test,val,dev}/<subject>_<split>.csv (the release's csv; shots from dev/)
Known differences from lm-eval: random few-shot examples come from a Go generator (MMLU's are
the first dev rows, as lm-eval's); the 6-line HellaSwag text cannot restore ctx_b's capital
letter (the jsonl can); the llm-foundry SIQA file keeps 2 of the 3 answers.
Training-free caches (--cache window|streaming|h2o|tova with --kv-budget or --cr) run on the CPU.
With --device cuda, perplexity and the benchmarks run on the CUDA engine (vanilla and DMC
caches), --batch sequences decoded together.`,
		Example: `  dmc eval --model runs/cr2 --data shards/ --json cr2.json
  dmc eval --model export/ --data ../shared/assets/english-text/tinyshakespeare_input.txt
  dmc eval --model stories260K.bin --data shards/ --cache vanilla
  dmc eval --model stories260K.bin --data shards/ --tasks channels --max-tokens 30000
  dmc eval --model runs/cr4 --tasks piqa,hellaswag,arc_easy --data-dir ../shared/assets --json cr4-tasks.json
  dmc eval --model runs/cr4 --tasks mmlu --num-fewshot 5 --limit 100 --data-dir /data/mmlu-release
  dmc eval plot --out plots/ cmp.json cr4-tasks.json   # PNGs of the results JSONs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop, caught := signalContext(cmd.Context())
			defer stop()
			o.offsetSet = cmd.Flags().Changed("decision-offset")
			_, err := o.Run(ctx, streams)
			if sig := caught(); sig != nil && err != nil {
				return interrupted(sig, "interrupted: "+err.Error())
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "a retrofit run directory, a dmc export directory, or any checkpoint (required)")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer (default: the run's, or found next to the model); used for text data")
	f.StringVar(&o.Data, "data", "", "prepared shards (held-out split by default), Arrow/HF dataset, or a .txt/.jsonl/.parquet file (needed by --tasks ppl and channels)")
	f.StringVar(&o.Split, "split", "", "split to evaluate (default: heldout when present, else train)")
	f.StringVar(&o.Tasks, "tasks", "ppl", "comma-separated tasks: ppl (perplexity and real CR), channels (what removing each q/k channel costs a base model: which to repurpose), and benchmarks: "+strings.Join(tasks.Names(), ", "))
	f.StringVar(&o.DataDir, "data-dir", "", "benchmark data folder laid out as ../shared/assets (default $DMC_EVAL_DATA)")
	f.IntVar(&o.NumFewShot, "num-fewshot", 0, "few-shot examples per benchmark item")
	f.IntVar(&o.Limit, "limit", 0, "score only the first N items of each benchmark (0 = all)")
	f.Uint64Var(&o.Seed, "seed", 1234, "seed of the few-shot sampling")
	f.StringVar(&o.LogSamples, "log-samples", "", "write every scored benchmark item (log-likelihoods, target, acc) as JSONL to this file")
	f.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	f.StringVar(&o.Device, "device", "cpu", "where perplexity and benchmark tasks are scored: cpu, or cuda (the CUDA engine, vanilla and DMC caches, --batch sequences at a time; training-free policies and channels stay on the CPU)")
	f.BoolVar(&o.Random, "random-weights", false, "with --device cuda and a preset --model: random weights drawn on the GPU, to measure scoring speed (accuracies are meaningless)")
	f.IntVar(&o.ForceCR, "force-cr", 0, "with --random-weights and --cache dmc: force the DMC merges to this compression (results labelled forced)")
	f.IntVar(&o.Batch, "batch", 256, "with --device cuda: sequences scored together (contexts prefilled together, continuations decoded in lockstep)")
	f.StringVar(&o.Cache, "cache", "auto", "auto (DMC for DMC models), vanilla, dmc, or a training-free policy: window, streaming (4 sinks + recent), h2o (heavy hitters + recent), tova")
	f.StringVar(&o.Compare, "compare", "", "run the tasks once per cache (e.g. vanilla,window,streaming,h2o,tova) at the same --kv-budget or --cr and print one table")
	f.IntVar(&o.KVBudget, "kv-budget", 0, "slots per layer and KV head of a training-free policy")
	f.Float64Var(&o.CR, "cr", 0, "size a training-free policy for this compression rate: for perplexity, the fixed budget whose real CR on the scored sequences is CR; for --tasks, a budget growing with each item (⌈t/r⌉ slots after t tokens), r solved per task so that its real CR is CR")
	f.IntVar(&o.SeqLen, "seq-len", 0, "longest sequence decoded from one cache (default: the model's context)")
	f.IntVar(&o.MaxTokens, "max-tokens", 0, "stop after about this many scored tokens (0 = all)")
	f.Float64Var(&o.DecisionOffset, "decision-offset", 0, "DMC models: replace the decision offset (higher: fewer merges, lower CR; dmc export --calibrate-cr picks one for the target CR)")
	f.StringVar(&o.Separator, "separator", "", "document separator of .txt data (default <|endoftext|>)")
	f.StringVar(&o.TextField, "text-field", "", "text field of .jsonl data (default text)")
	f.StringVar(&o.TextColumn, "text-column", "", "text column of Parquet/Arrow data or a Hugging Face dataset (default text, or the only string column)")
	_ = cmd.MarkFlagRequired("model")
	cmd.AddCommand(newEvalPlotCmd(streams))
	return cmd
}

// EvalReport is the JSON written by `dmc eval --json`.
type EvalReport = retrofit.EvalReport

// Run evaluates and prints a table; it returns the report.
func (o *EvalOptions) Run(ctx context.Context, streams *IO) (*EvalReport, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	prog := newProgressLine(streams.Err, "tokens")
	items := newProgressLine(streams.Err, "items")
	if o.Compare != "" {
		return nil, o.runCompare(ctx, streams, prog, items)
	}
	rep, err := retrofit.Evaluate(ctx, o.spec(),
		retrofit.EvalHooks{
			Start: func(what string) { prog.done(); items.done(); fmt.Fprintln(streams.Err, what) },
			Items: items.updateOf,
			Warn:  streams.Err,
			PPL:   prog.update,
			Channel: func(c int, r *eval.PPLResult) {
				what := "no channel removed"
				if c >= 0 {
					what = fmt.Sprintf("channel %d removed", c)
				}
				fmt.Fprintf(streams.Err, "  %s: ppl %.4f (%d tokens, %.0f tok/s)\n", what, r.PPL, r.Tokens, r.TokensPerS)
			},
		})
	prog.done()
	items.done()
	if err != nil {
		return nil, err
	}
	if rep.PPL != nil && (rep.Channels == nil || rep.PPL != rep.Channels.Base) {
		printEval(streams, rep)
	}
	if rep.BenchmarkResults != nil {
		if err := tasks.WriteMarkdown(streams.Out, rep.BenchmarkResults); err != nil {
			return nil, err
		}
	}
	if rep.Channels != nil {
		printChannels(streams, rep.Channels, rep.HeadDim)
	}
	return rep, nil
}

func printChannels(streams *IO, r *eval.ChannelAblationResult, headDim int) {
	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(w, "\nchannel removed\tperplexity\tvs base %.4f\n", r.BasePPL)
	for _, c := range r.PerChannel {
		mark := ""
		if c.Channel == r.Recommended {
			mark = "  <- cheapest"
		}
		if c.Channel == headDim-1 {
			mark += "  (the reference's choice)"
		}
		fmt.Fprintf(w, "%d\t%.4f\t%+.1f%%%s\n", c.Channel, c.PPL, 100*c.Increase, mark)
	}
	w.Flush()
	fmt.Fprintf(streams.Out, "repurpose channel %d for the DMC decision: decision_channel: %d in the recipe, or dmc retrofit --set decision_channel=%d\n",
		r.Recommended, r.Recommended, r.Recommended)
}

func printEval(streams *IO, r *EvalReport) {
	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(w, "perplexity\t%.4f\n", r.PPL.PPL)
	fmt.Fprintf(w, "tokens scored\t%d in %d sequences (%.0f tok/s)\n", r.PPL.Tokens, r.PPL.Sequences, r.PPL.TokensPerS)
	fmt.Fprintf(w, "compression rate\t%.3fx (%s cache)\n", r.CR, r.Cache)
	var layers []string
	for _, c := range r.CRPerLayer {
		layers = append(layers, fmt.Sprintf("%.2f", c))
	}
	fmt.Fprintf(w, "CR per layer\t%s\n", strings.Join(layers, " "))
	for l, hs := range r.CRPerHead {
		var s []string
		for _, c := range hs {
			s = append(s, fmt.Sprintf("%.2f", c))
		}
		fmt.Fprintf(w, "  layer %d heads\t%s\n", l, strings.Join(s, " "))
	}
	w.Flush()
}

// check refuses bad flags before the model is loaded.
func (o *EvalOptions) check() error {
	if o.SeqLen < 0 || o.SeqLen == 1 {
		return fmt.Errorf("--seq-len must be 0 (the model's context) or ≥ 2 (a prediction needs two tokens), got %d", o.SeqLen)
	}
	var dataErr error
	if o.Data != "" {
		dataErr = retrofit.CheckDataPath(o.Data, "--data")
	}
	if err := firstErr(checkInt("max-tokens", o.MaxTokens, 0, "≥ 0 (0 = all)"), checkInt("num-fewshot", o.NumFewShot, 0, "≥ 0"),
		checkInt("kv-budget", o.KVBudget, 0, "≥ 0 (slots per layer and KV head)"),
		checkFloat("cr", o.CR, func(x float64) bool { return x == 0 || x >= 1 }, "0 or ≥ 1 (a compression rate)"),
		checkInt("limit", o.Limit, 0, "≥ 0 (0 = all)"), dataErr, retrofit.CheckWritable(o.JSON, "--json"),
		retrofit.CheckWritable(o.LogSamples, "--log-samples")); err != nil {
		return err
	}
	if o.TextField != "" && o.TextColumn != "" && o.TextField != o.TextColumn {
		return fmt.Errorf("--text-field %q and --text-column %q differ: give one (--text-field for .jsonl, --text-column for Parquet/Arrow)", o.TextField, o.TextColumn)
	}
	return nil
}

// runCompare runs --compare: one row per cache policy.
func (o *EvalOptions) runCompare(ctx context.Context, streams *IO, prog, items *progressLine) error {
	spec := o.spec()
	rows, err := retrofit.Compare(ctx, spec, strings.Split(o.Compare, ","), retrofit.EvalHooks{
		Start: func(what string) { prog.done(); items.done(); fmt.Fprintln(streams.Err, what) },
		PPL:   prog.update,
		Items: items.updateOf,
		Warn:  streams.Err,
	})
	prog.done()
	items.done()
	if err != nil {
		return err
	}
	var names []string
	for _, r := range rows {
		for n := range r.Tasks {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	fmt.Fprint(w, "cache\tperplexity\treal CR")
	for _, n := range names {
		fmt.Fprintf(w, "\t%s acc", n)
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%.4f\t%.2fx", r.Cache, r.Perplexity, r.CR)
		for _, n := range names {
			if v, ok := r.Tasks[n]["acc,none"].(float64); ok {
				fmt.Fprintf(w, "\t%.4f", v)
			} else {
				fmt.Fprint(w, "\t-")
			}
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

// spec is the evaluation the flags ask for.
func (o *EvalOptions) spec() retrofit.EvalSpec {
	spec := retrofit.EvalSpec{Model: o.Model, Tokenizer: o.Tokenizer, Data: o.Data, Split: o.Split,
		Tasks: o.Tasks, JSON: o.JSON, Cache: o.Cache, KVBudget: o.KVBudget, CR: o.CR, SeqLen: o.SeqLen, MaxTokens: o.MaxTokens, Separator: o.Separator,
		TextField: o.TextField, TextColumn: o.TextColumn, DataDir: o.DataDir, NumFewShot: o.NumFewShot, Limit: o.Limit, Seed: o.Seed,
		LogSamples: o.LogSamples, Device: o.Device, Batch: o.Batch, RandomWeights: o.Random, ForceCR: o.ForceCR}
	if o.offsetSet {
		off := o.DecisionOffset
		spec.DecisionOffset = &off
	}
	return spec
}
