package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

// RetrofitOptions are the flags of `dmc retrofit`.
type RetrofitOptions struct {
	Model     string
	Weights   string
	Tokenizer string
	Data      string
	Heldout   string
	Out       string
	Config    string
	TargetCR  float64
	Steps     int
	Resume    bool
	Control   bool
	Set       []string
	StopAfter int
	Quiet     bool
}

func init() { register(newRetrofitCmd) }

func newRetrofitCmd(streams *IO) *cobra.Command {
	o := &RetrofitOptions{}
	cmd := &cobra.Command{
		Use:   "retrofit",
		Short: "Retrofit a Llama checkpoint with DMC by continued training (or run the vanilla control)",
		Long: `Continues pre-training a Llama model so that every layer and KV head learns when to merge
new keys/values into the last cache slot (Dynamic Memory Compression). Stages follow the
reference: zero-out of the decision channel, a linear ramp of the target compression rate,
then fine-tuning at the target. Checkpoints are written atomically every checkpoint_every
steps and on Ctrl-C; --resume continues bit-exactly.`,
		Example: `  dmc retrofit --model stories260K.bin --data shards/ --target-cr 2 --steps 400 --out runs/cr2
  dmc retrofit --model llama2-7b --weights /models/Llama-2-7b-hf --data shards/ --target-cr 4 --out runs/7b-cr4
  dmc retrofit --out runs/cr2 --resume
  dmc retrofit --model stories260K.bin --data shards/ --control --steps 400 --out runs/control`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err := o.Run(ctx, streams)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "checkpoint path, hub id, or preset name ("+fmt.Sprint(model.PresetNames())+")")
	f.StringVar(&o.Weights, "weights", "", "weights for a preset (directory or file); default: $DMC_WEIGHTS, then the Hugging Face cache")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer of the data (default: from the shards' manifest, or next to the model)")
	f.StringVar(&o.Data, "data", "", "training shards (dmc data prepare output, Arrow or HF dataset)")
	f.StringVar(&o.Heldout, "heldout", "", "held-out data for the final perplexity (default: the heldout split of --data when present)")
	f.StringVar(&o.Out, "out", "", "run directory for checkpoints, metrics and the resolved recipe (required)")
	f.StringVar(&o.Config, "config", "", "recipe: a YAML file or an embedded recipe name (default: default)")
	f.Float64Var(&o.TargetCR, "target-cr", 0, "target compression rate (≥ 1; overrides the recipe)")
	f.IntVar(&o.Steps, "steps", 0, "total optimiser steps; the recipe's stage lengths are scaled to sum to it")
	f.BoolVar(&o.Resume, "resume", false, "continue the run in --out from its latest checkpoint")
	f.BoolVar(&o.Control, "control", false, "plain continued training with the same steps and data, no DMC (the control run)")
	f.StringArrayVar(&o.Set, "set", nil, "override a recipe field, e.g. --set lr=1e-4 (repeatable)")
	f.IntVar(&o.StopAfter, "stop-after", 0, "stop (with a checkpoint) after this many steps in total; resume later")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// RetrofitResult is what a finished retrofit reports.
type RetrofitResult struct {
	Run     trainer.Result
	Heldout *eval.PPLResult
}

// runSpec is run.json: the inputs of a run, so --resume needs only --out.
type runSpec struct {
	Model     string `json:"model"`
	Weights   string `json:"weights,omitempty"`
	Tokenizer string `json:"tokenizer,omitempty"`
	Data      string `json:"data"`
	Heldout   string `json:"heldout,omitempty"`
	Config    string `json:"config,omitempty"`
	TargetCR  float64
	Steps     int
	Control   bool
	Set       []string
}

// Run trains and, when held-out data is available, evaluates the result with the real cache.
func (o *RetrofitOptions) Run(ctx context.Context, streams *IO) (*RetrofitResult, error) {
	specPath := filepath.Join(o.Out, "run.json")
	if o.Resume && o.Model == "" {
		b, err := os.ReadFile(specPath)
		if err != nil {
			return nil, fmt.Errorf("--resume without --model needs %s (written when the run started): %w", specPath, err)
		}
		var s runSpec
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("%s is unreadable: %w", specPath, err)
		}
		o.Model, o.Weights, o.Tokenizer, o.Data, o.Heldout, o.Config = s.Model, s.Weights, s.Tokenizer, s.Data, s.Heldout, s.Config
		o.TargetCR, o.Steps, o.Control, o.Set = s.TargetCR, s.Steps, s.Control, s.Set
	}
	if o.Model == "" || o.Data == "" {
		return nil, errors.New("--model and --data are required (or --resume with an existing --out)")
	}
	recipe, err := o.recipe()
	if err != nil {
		return nil, err
	}
	w, src, err := resolveWeights(o.Model, o.Weights)
	if err != nil {
		return nil, err
	}
	cfg := w.Config
	if recipe.SeqLen > cfg.MaxSeqLen {
		return nil, fmt.Errorf("recipe seq_len %d exceeds the model's context of %d tokens: use --set seq_len=%d or less", recipe.SeqLen, cfg.MaxSeqLen, cfg.MaxSeqLen)
	}
	dc := dmc.DefaultConfig()
	dc.Window, dc.Temperature, dc.DecisionChannel = recipe.Window, recipe.Temperature, recipe.DecisionChannel
	dc.DecisionOffset, dc.ImportanceOffset = recipe.DecisionOffset, recipe.ImportanceOffset
	if err := dc.Validate(); err != nil {
		return nil, err
	}
	if err := dc.CheckHeadDim(cfg.HeadDim()); err != nil {
		return nil, err
	}
	ds, err := data.OpenWith(o.Data, data.OpenOptions{Split: splitOf(o.Data, "train")})
	if err != nil {
		return nil, err
	}
	tokPath := o.Tokenizer
	if ds.Manifest != nil {
		if ds.Manifest.Tokenizer.VocabSize > cfg.VocabSize {
			return nil, fmt.Errorf("the shards in %s were tokenised with a %d-token vocabulary but the model has %d: re-run dmc data prepare with the model's tokenizer",
				o.Data, ds.Manifest.Tokenizer.VocabSize, cfg.VocabSize)
		}
		if tokPath == "" {
			tokPath = ds.Manifest.Tokenizer.Path
		}
	}
	source, err := newPackerSource(ds, data.PackerOptions{SeqLen: recipe.SeqLen, Shuffle: true, Seed: recipe.Seed})
	if err != nil {
		return nil, err
	}
	defer source.Close()
	g, err := newGraphModel(w, dc, recipe.MicroBatchSize(), recipe.SeqLen, recipe.DistillWeight > 0)
	if err != nil {
		return nil, err
	}
	info := runInfo{Model: cfg, Base: src, Tokenizer: tokPath}
	if recipe.Mode == trainer.ModeDMC {
		info.DMC, info.TargetCR = &dc, recipe.TargetCR
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	spec, _ := json.MarshalIndent(runSpec{o.Model, o.Weights, tokPath, o.Data, o.Heldout, o.Config, o.TargetCR, o.Steps, o.Control, o.Set}, "", "  ")
	if !o.Resume {
		if err := writeFileAtomic(specPath, append(spec, '\n')); err != nil {
			return nil, err
		}
	}
	mode := "DMC retrofit to CR " + fmt.Sprint(recipe.TargetCR)
	if recipe.Mode == trainer.ModeControl {
		mode = "control run (no DMC)"
	}
	fmt.Fprintf(streams.Err, "%s of %s (%s params): %d steps of %d×%d tokens, run dir %s\n",
		mode, src, humanCount(cfg.NumParams()), recipe.TotalSteps(), recipe.BatchSize, recipe.SeqLen, o.Out)
	res, err := trainer.Run(ctx, trainer.Options{
		RunDir: o.Out, Recipe: recipe, Model: g, Source: &vocabCheckedSource{source, cfg.VocabSize, o.Data},
		ModelConfig: info, Resume: o.Resume, StopAfter: o.StopAfter, Progress: streams.Err,
		OnZeroOutEnd: func(params []trainer.Param) error { return zeroDecisionRows(params, cfg, dc) },
	})
	if err != nil {
		return nil, err
	}
	out := &RetrofitResult{Run: res}
	if res.Interrupted {
		fmt.Fprintf(streams.Err, "interrupted: saved %s; continue with: dmc retrofit --out %s --resume\n", res.Checkpoint, o.Out)
		return out, nil
	}
	if !res.Done {
		return out, nil
	}
	heldout := o.Heldout
	if heldout == "" && ds.Manifest != nil {
		if s, ok := ds.Manifest.Splits["heldout"]; ok && s.Docs > 0 {
			heldout = o.Data + ":heldout"
		}
	}
	if heldout != "" {
		final := g.weights()
		name, factory, _ := cacheFactory("auto", cfg, info.DMC)
		hds, err := data.OpenWith(heldout, data.OpenOptions{})
		if err != nil {
			return out, err
		}
		// Decode at the model's full context, as dmc eval does, so the two numbers agree.
		r, err := eval.Perplexity(ctx, final, factory, hds.Documents(), eval.PPLOptions{})
		if err != nil {
			return out, err
		}
		out.Heldout = r
		b, _ := json.MarshalIndent(r, "", "  ")
		_ = writeFileAtomic(filepath.Join(o.Out, "heldout.json"), append(b, '\n'))
		fmt.Fprintf(streams.Out, "held-out perplexity %.4f over %d tokens, real compression %.2fx (%s cache)\n", r.PPL, r.Tokens, r.CR, name)
	}
	return out, nil
}

func splitOf(path, def string) string {
	if m, err := data.ReadManifest(path); err == nil {
		if _, ok := m.Splits[def]; ok {
			return def
		}
	}
	return ""
}

// recipe resolves the recipe from --config, --target-cr, --steps, --control and --set.
func (o *RetrofitOptions) recipe() (trainer.Recipe, error) {
	name := o.Config
	if name == "" {
		name = "default"
	}
	r, err := trainer.LoadRecipe(name)
	if err != nil {
		return r, err
	}
	if o.TargetCR != 0 {
		if !(o.TargetCR >= 1) {
			return r, fmt.Errorf("--target-cr must be ≥ 1 (1 = no compression, 2 = half the KV cache), got %g", o.TargetCR)
		}
		r.TargetCR = o.TargetCR // stage lengths the recipe leaves at 0 are derived from it below
	}
	if o.Control {
		r.Mode = trainer.ModeControl
	}
	if err := r.ApplyOverrides(o.Set); err != nil {
		return r, err
	}
	r.Resolve()
	if o.Steps < 0 {
		return r, fmt.Errorf("--steps must be positive, got %d", o.Steps)
	}
	if o.Steps > 0 {
		scaleStages(&r, o.Steps)
	}
	return r, r.Validate()
}

// scaleStages rescales the three stage lengths (and the ramp) so they sum to total.
func scaleStages(r *trainer.Recipe, total int) {
	old := r.TotalSteps()
	if old <= 0 {
		r.RetrofitSteps, r.RampSteps = total, total
		return
	}
	f := float64(total) / float64(old)
	r.ZeroOutSteps = int(math.Round(float64(r.ZeroOutSteps) * f))
	ramp := int(math.Round(float64(r.RampSteps) * f))
	r.FineTuneSteps = int(math.Round(float64(r.FineTuneSteps) * f))
	r.RetrofitSteps = max(total-r.ZeroOutSteps-r.FineTuneSteps, 0)
	r.RampSteps = min(ramp, r.RetrofitSteps)
	if r.WarmupSteps > total/4 {
		r.WarmupSteps = total / 4
	}
}

// resolveWeights loads a checkpoint, or for a preset finds its weights (--weights, $DMC_WEIGHTS,
// the Hugging Face cache) and checks they have the preset's shape.
func resolveWeights(modelArg, weights string) (*model.Weights, string, error) {
	preset, perr := model.Preset(modelArg)
	if perr != nil {
		w, src, err := checkpoints.Load(modelArg)
		return w, src, err
	}
	var tried []string
	candidates := []string{weights, os.Getenv("DMC_WEIGHTS"), preset.HFRepo}
	labels := []string{"--weights", "$DMC_WEIGHTS", "the Hugging Face cache entry " + preset.HFRepo}
	for i, c := range candidates {
		if c == "" {
			continue
		}
		w, src, err := checkpoints.Load(c)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (%s): %v", labels[i], c, err))
			if i < 2 {
				return nil, "", fmt.Errorf("weights for preset %s from %s: %w", modelArg, labels[i], err)
			}
			continue
		}
		wc, pc := w.Config, preset
		wc.Name, wc.HFRepo, pc.Name, pc.HFRepo, wc.RoPE, pc.RoPE, wc.MaxSeqLen, pc.MaxSeqLen = "", "", "", "", "", "", 0, 0
		if wc != pc {
			return nil, "", fmt.Errorf("the weights at %s do not have the shape of preset %s (got %+v)", src, modelArg, w.Config)
		}
		return w, src, nil
	}
	msg := fmt.Sprintf("preset %s needs its weights (%s parameters). Download them, e.g. `huggingface-cli download %s`, or pass --weights DIR (a Hugging Face Llama directory or a llama2.c .bin), or set DMC_WEIGHTS",
		modelArg, humanCount(preset.NumParams()), preset.HFRepo)
	if len(tried) > 0 {
		msg += "; tried: " + fmt.Sprint(tried)
	}
	return nil, "", errors.New(msg)
}

// vocabCheckedSource stops training with a clear error when the data holds ids the model lacks.
type vocabCheckedSource struct {
	*packerSource
	vocab int
	path  string
}

func (s *vocabCheckedSource) Next() ([]int, error) {
	w, err := s.packerSource.Next()
	for _, t := range w {
		if t < 0 || t >= s.vocab {
			return nil, fmt.Errorf("the data in %s has token id %d but the model's vocabulary has %d entries: the shards come from a different tokenizer; re-run dmc data prepare with the model's tokenizer", s.path, t, s.vocab)
		}
	}
	return w, err
}

// zeroDecisionRows zeroes the W_q/W_k rows that produce the decision channel, in the trainer's
// parameter view (HF names), at the end of stage 1.
func zeroDecisionRows(params []trainer.Param, cfg model.Config, dc dmc.Config) error {
	p, err := model.NewParams[float32](cfg)
	if err != nil {
		return err
	}
	byName := map[string][]float32{}
	for _, t := range params {
		byName[t.Name] = t.Value
	}
	for i := range p.Layers {
		q := byName[fmt.Sprintf("model.layers.%d.self_attn.q_proj.weight", i)]
		k := byName[fmt.Sprintf("model.layers.%d.self_attn.k_proj.weight", i)]
		if q == nil || k == nil {
			return fmt.Errorf("the training graph has no q/k projection for layer %d", i)
		}
		p.Layers[i].Wq, p.Layers[i].Wk = q, k
	}
	return dmc.ZeroDecisionRows(p, dc)
}
