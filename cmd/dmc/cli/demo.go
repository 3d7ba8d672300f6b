package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/retrofit"
)

// DemoOptions are the flags of `dmc demo`.
type DemoOptions struct {
	Out           string
	CorpusMB      float64
	PretrainSteps int
	RetrofitSteps int
	TargetCR      float64
	Seed          uint64
}

func init() { register(newDemoCmd) }

func newDemoCmd(streams *IO) *cobra.Command {
	o := &DemoOptions{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole job on an embedded default: build a small Llama, retrofit it with DMC, evaluate, export, generate",
		Long: `Runs end to end with no downloads: generates a story corpus, trains a BPE tokenizer,
prepares Arrow shards, pre-trains a small Llama (configs/models/demo-small.yaml), retrofits
it with DMC to the target compression rate, evaluates vanilla vs DMC with the real caches,
exports the DMC model and generates from the export. About 10 minutes on 2 cores.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop, caught := signalContext(cmd.Context())
			defer stop()
			err := o.Run(ctx, streams)
			if sig := caught(); sig != nil && err != nil {
				return interrupted(sig, err.Error())
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Out, "out", "runs/demo", "working directory (reused: finished stages are skipped)")
	f.Float64Var(&o.CorpusMB, "corpus-mb", 2, "size of the generated corpus")
	f.IntVar(&o.PretrainSteps, "pretrain-steps", 400, "pre-training steps of the base model")
	f.IntVar(&o.RetrofitSteps, "retrofit-steps", 240, "DMC retrofit steps")
	f.Float64Var(&o.TargetCR, "target-cr", 2, "target compression rate")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the corpus and the initial weights")
	return cmd
}

// Run executes the demo stages; each stage's output is reused when the demo is run again.
func (o *DemoOptions) Run(ctx context.Context, streams *IO) error {
	if err := firstErr(checkFloat("corpus-mb", o.CorpusMB, func(x float64) bool { return x > 0 && x <= 1e5 }, "in (0, 100000] (MB of generated stories)"),
		checkInt("pretrain-steps", o.PretrainSteps, 1, "≥ 1"), checkInt("retrofit-steps", o.RetrofitSteps, 1, "≥ 1"),
		checkFloat("target-cr", o.TargetCR, func(x float64) bool { return x >= 1 }, "≥ 1 (1 = no compression, 2 = half the KV cache)")); err != nil {
		return err
	}
	start := time.Now()
	say := func(format string, a ...any) {
		fmt.Fprintf(streams.Err, "[%5.0fs] ", time.Since(start).Seconds())
		fmt.Fprintf(streams.Err, format+"\n", a...)
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	path := func(p string) string { return filepath.Join(o.Out, p) }

	// 1. Corpus and tokenizer.
	corpus, tokPath, shards := path("corpus.txt"), path("tokenizer.bin"), path("shards")
	if !exists(corpus) {
		say("generating a %.1f MB story corpus", o.CorpusMB)
		if err := retrofit.WriteStoryCorpus(corpus, int(o.CorpusMB*1e6), o.Seed); err != nil {
			return err
		}
	}
	cfg, err := model.Preset("demo-small")
	if err != nil {
		return err
	}
	if !exists(tokPath) {
		say("training a %d-token BPE tokenizer", cfg.VocabSize)
		if err := retrofit.TrainTokenizer(corpus, tokPath, cfg.VocabSize); err != nil {
			return err
		}
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return err
	}
	if !exists(filepath.Join(shards, "manifest.json")) {
		say("tokenising into Arrow shards (5%% of stories held out)")
		if _, err := data.Prepare(data.PrepareOptions{Inputs: []string{corpus}, Out: shards, Tokenizer: tok, TokenizerPath: tokPath,
			HeldoutFrac: 0.05, Seed: o.Seed, Overwrite: true}); err != nil {
			return err
		}
	}

	// 2. A base model: random init, then pre-training (a control run = plain LM training).
	initDir, baseRun, baseDir := path("init"), path("runs/base"), path("base")
	if !exists(filepath.Join(initDir, "config.json")) {
		if err := retrofit.WriteRandomInit(initDir, cfg, o.Seed); err != nil {
			return err
		}
	}
	// train runs one stage (resuming it when the demo was interrupted) and exports it.
	train := func(spec retrofit.Spec, what, exportTo string) error {
		spec.Tokenizer, spec.Data, spec.Resume = tokPath, shards, exists(filepath.Join(spec.Out, "checkpoints"))
		res, err := retrofit.Run(ctx, spec, streams.Err)
		if err != nil {
			return err
		}
		if !res.Run.Done {
			return fmt.Errorf("%s interrupted; run the demo again to continue", what)
		}
		if res.Heldout != nil {
			fmt.Fprintf(streams.Err, "held-out perplexity %.4f over %d tokens, real compression %.2fx (%s cache)\n", res.Heldout.PPL, res.Heldout.Tokens, res.Heldout.CR, res.Cache)
		}
		_, err = retrofit.Export(ctx, spec.Out, exportTo, retrofit.ExportOptions{DType: "fp32", Tokenizer: tokPath, ShardMB: 1 << 20, Warn: streams.Err})
		return err
	}
	if !exists(filepath.Join(baseDir, "config.json")) {
		say("pre-training the base model (%s parameters) for %d steps", retrofit.HumanCount(cfg.NumParams()), o.PretrainSteps)
		if err := train(retrofit.Spec{Model: initDir, Out: baseRun, Config: "demo-pretrain", Control: true, Steps: o.PretrainSteps},
			"pre-training", baseDir); err != nil {
			return err
		}
	}

	// 3. DMC retrofit.
	dmcRun, exportDir := path("runs/dmc"), path("export")
	if !exists(filepath.Join(exportDir, "config.json")) {
		say("retrofitting with DMC to CR %g for %d steps", o.TargetCR, o.RetrofitSteps)
		if err := train(retrofit.Spec{Model: baseDir, Out: dmcRun, Config: "demo-retrofit", TargetCR: o.TargetCR, Steps: o.RetrofitSteps},
			"retrofit", exportDir); err != nil {
			return err
		}
	}

	// 3b. The control: plain continued training with the same recipe, steps and data, so the
	// comparison separates the effect of DMC from the effect of training longer.
	controlRun, controlDir := path("runs/control"), path("control")
	if !exists(filepath.Join(controlDir, "config.json")) {
		say("control: continued training without DMC for the same %d steps", o.RetrofitSteps)
		if err := train(retrofit.Spec{Model: baseDir, Out: controlRun, Config: "demo-retrofit", Control: true, Steps: o.RetrofitSteps},
			"control run", controlDir); err != nil {
			return err
		}
	}

	// 4. Evaluate vanilla vs DMC on the held-out stories with the real caches.
	say("evaluating on the held-out stories")
	evalOf := func(m, cache string) (*retrofit.EvalReport, error) {
		return retrofit.Evaluate(ctx, retrofit.EvalSpec{Model: m, Data: shards, Tasks: "ppl", Cache: cache,
			JSON: path("eval-" + filepath.Base(m) + "-" + cache + ".json")}, retrofit.EvalHooks{})
	}
	base, err := evalOf(baseDir, "vanilla")
	if err != nil {
		return err
	}
	control, err := evalOf(controlDir, "vanilla")
	if err != nil {
		return err
	}
	dmcRep, err := evalOf(exportDir, "dmc")
	if err != nil {
		return err
	}

	// 5. Generate from the export with the compressed cache.
	const promptText = "Once upon a time, there was a little"
	sample := bytes.NewBufferString(promptText)
	exported, err := retrofit.LoadModel(exportDir, retrofit.LoadOptions{NeedTokenizer: true})
	if err != nil {
		return err
	}
	cache, err := exported.Cache("auto")
	if err != nil {
		return err
	}
	dec, err := retrofit.NewDecoder(exported, cache, "cpu", exported.Weights.Config.MaxSeqLen)
	if err != nil {
		return err
	}
	if _, err := retrofit.Generate(dec, exported.Tokenizer, exported.Tokenizer.Encode(promptText, true, false),
		retrofit.GenerateOptions{MaxTokens: 50, MaxContext: exported.Weights.Config.MaxSeqLen}, sample); err != nil {
		return err
	}

	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(w, "\nDMC demo (%s, %s parameters), held-out stories: %d tokens\n\n", cfg.Name, retrofit.HumanCount(cfg.NumParams()), base.Tokens)
	fmt.Fprintln(w, "model\tKV cache\tperplexity\tcompression (tokens/slots)\tKV slots")
	fmt.Fprintf(w, "base (vanilla)\tfull\t%.3f\t%.2fx\t%d\n", base.Perplexity, base.CR, base.PPL.Slots)
	fmt.Fprintf(w, "control: +%d steps, no DMC\tfull\t%.3f\t%.2fx\t%d\n", o.RetrofitSteps, control.Perplexity, control.CR, control.PPL.Slots)
	fmt.Fprintf(w, "DMC: +%d steps, target %gx\tcompressed\t%.3f\t%.2fx\t%d\n", o.RetrofitSteps, o.TargetCR, dmcRep.Perplexity, dmcRep.CR, dmcRep.PPL.Slots)
	w.Flush()
	fmt.Fprintf(streams.Out, "\nDMC vs the control (same training): perplexity %+.1f%%, KV cache %.2fx smaller\n", 100*(dmcRep.Perplexity/control.Perplexity-1), dmcRep.CR)
	fmt.Fprintf(streams.Out, "\nsample from the export (greedy, DMC cache):\n  %s\n", bytes.TrimSpace(sample.Bytes()))
	fmt.Fprintf(streams.Out, "\nfiles: %s (export), %s (run, metrics.jsonl), %s (shards)\n", exportDir, dmcRun, shards)
	fmt.Fprintf(streams.Out, "next: dmc eval --model %s --data %s ; dmc generate --model %s --prompt \"Tom had a\"\n", exportDir, shards, exportDir)
	say("done")
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
