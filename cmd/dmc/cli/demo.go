package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/bpe"
	"github.com/dmc-project/dmc/data/synth"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/model"
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
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return o.Run(ctx, streams)
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
		var buf bytes.Buffer
		if err := synth.Write(&buf, int(o.CorpusMB*1e6), o.Seed); err != nil {
			return err
		}
		if err := writeFileAtomic(corpus, buf.Bytes()); err != nil {
			return err
		}
	}
	cfg, err := model.Preset("demo-small")
	if err != nil {
		return err
	}
	if !exists(tokPath) {
		say("training a %d-token BPE tokenizer", cfg.VocabSize)
		f, err := os.Open(corpus)
		if err != nil {
			return err
		}
		pieces, err := bpe.Train(bufio.NewReader(f), cfg.VocabSize, synth.Separator)
		f.Close()
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := bpe.WriteLlama2C(&buf, pieces); err != nil {
			return err
		}
		if err := writeFileAtomic(tokPath, buf.Bytes()); err != nil {
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
		w, err := model.RandomParams[float32](cfg, o.Seed)
		if err != nil {
			return err
		}
		if err := checkpoints.WriteHF(initDir, w, "fp32", nil, 1<<40); err != nil {
			return err
		}
	}
	quiet := &IO{In: streams.In, Out: streams.Err, Err: streams.Err}
	if !exists(filepath.Join(baseDir, "config.json")) {
		say("pre-training the base model (%s parameters) for %d steps", humanCount(cfg.NumParams()), o.PretrainSteps)
		ro := &RetrofitOptions{Model: initDir, Tokenizer: tokPath, Data: shards, Out: baseRun, Config: "demo-pretrain",
			Control: true, Steps: o.PretrainSteps, Resume: exists(filepath.Join(baseRun, "checkpoints"))}
		res, err := ro.Run(ctx, quiet)
		if err != nil {
			return err
		}
		if !res.Run.Done {
			return fmt.Errorf("pre-training interrupted; run the demo again to continue")
		}
		if err := (&ExportOptions{RunDir: baseRun, Out: baseDir, DType: "fp32", Tokenizer: tokPath, ShardMB: 1 << 20}).Run(ctx, quiet); err != nil {
			return err
		}
	}

	// 3. DMC retrofit.
	dmcRun, exportDir := path("runs/dmc"), path("export")
	if !exists(filepath.Join(exportDir, "config.json")) {
		say("retrofitting with DMC to CR %g for %d steps", o.TargetCR, o.RetrofitSteps)
		ro := &RetrofitOptions{Model: baseDir, Tokenizer: tokPath, Data: shards, Out: dmcRun, Config: "demo-retrofit",
			TargetCR: o.TargetCR, Steps: o.RetrofitSteps, Resume: exists(filepath.Join(dmcRun, "checkpoints"))}
		res, err := ro.Run(ctx, quiet)
		if err != nil {
			return err
		}
		if !res.Run.Done {
			return fmt.Errorf("retrofit interrupted; run the demo again to continue")
		}
		say("exporting the DMC model")
		if err := (&ExportOptions{RunDir: dmcRun, Out: exportDir, DType: "fp32", Tokenizer: tokPath, ShardMB: 1 << 20}).Run(ctx, quiet); err != nil {
			return err
		}
	}

	// 3b. The control: plain continued training with the same recipe, steps and data, so the
	// comparison separates the effect of DMC from the effect of training longer.
	controlRun, controlDir := path("runs/control"), path("control")
	if !exists(filepath.Join(controlDir, "config.json")) {
		say("control: continued training without DMC for the same %d steps", o.RetrofitSteps)
		ro := &RetrofitOptions{Model: baseDir, Tokenizer: tokPath, Data: shards, Out: controlRun, Config: "demo-retrofit",
			Control: true, Steps: o.RetrofitSteps, Resume: exists(filepath.Join(controlRun, "checkpoints"))}
		res, err := ro.Run(ctx, quiet)
		if err != nil {
			return err
		}
		if !res.Run.Done {
			return fmt.Errorf("control run interrupted; run the demo again to continue")
		}
		if err := (&ExportOptions{RunDir: controlRun, Out: controlDir, DType: "fp32", Tokenizer: tokPath, ShardMB: 1 << 20}).Run(ctx, quiet); err != nil {
			return err
		}
	}

	// 4. Evaluate vanilla vs DMC on the held-out stories with the real caches.
	say("evaluating on the held-out stories")
	evalOf := func(m, cache string) (*EvalReport, error) {
		silent := &IO{In: streams.In, Out: &bytes.Buffer{}, Err: &bytes.Buffer{}}
		return (&EvalOptions{Model: m, Data: shards, Tasks: "ppl", Cache: cache, JSON: path("eval-" + filepath.Base(m) + "-" + cache + ".json")}).Run(ctx, silent)
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
	var sample bytes.Buffer
	gen := &GenerateOptions{Model: exportDir, Prompt: "Once upon a time, there was a little", MaxTokens: 50, Temperature: 0, Cache: "auto", Device: "cpu"}
	if err := gen.Run(&IO{In: streams.In, Out: &sample, Err: &bytes.Buffer{}}); err != nil {
		return err
	}

	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(w, "\nDMC demo (%s, %s parameters), held-out stories: %d tokens\n\n", cfg.Name, humanCount(cfg.NumParams()), base.Tokens)
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
