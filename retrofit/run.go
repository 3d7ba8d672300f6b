package retrofit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/graph/device"
	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

// Spec is what a retrofit run is asked to do. The persisted part is run.json (its keys are
// the JSON names below), so that --resume needs only the run directory.
type Spec struct {
	Model     string  `json:"model"`               // checkpoint, hub id or preset
	Weights   string  `json:"weights,omitempty"`   // weights of a preset
	Tokenizer string  `json:"tokenizer,omitempty"` // default: the shards' manifest, or next to the model
	Data      string  `json:"data"`                // training shards
	Heldout   string  `json:"heldout,omitempty"`   // held-out data (default: the heldout split of Data)
	Config    string  `json:"config,omitempty"`    // recipe name or YAML file (default: default)
	TargetCR  float64 `json:"TargetCR"`            // overrides the recipe's target_cr when ≠ 0
	Steps     int     `json:"Steps"`               // total steps; the recipe's stages are scaled to it when ≠ 0
	Control   bool    `json:"Control"`             // plain continued training, no DMC
	// Init "random" starts from a random initialisation of Model's architecture (a preset, a
	// YAML model config or a checkpoint's config) instead of its weights: pre-training from
	// scratch, with --control and a pre-training recipe. "" (or "weights") loads the weights.
	Init string   `json:"init,omitempty"`
	Set  []string `json:"Set"` // recipe overrides key=value

	HeldoutTokens int `json:"heldout_tokens,omitempty"` // stop the final held-out evaluation after about this many tokens (0 = all)

	// Device trains on "cpu" (default) or "cuda" (GPU 0; needs the dmc_cuda build). It is not
	// stored in run.json: checkpoints are the same on both, so a run resumes on either.
	Device string `json:"-"`
	// GEMM is the GPU's GEMM operand precision: "bf16" (default: bf16 operands, fp32
	// accumulation) or "fp32" (exact fp32, slower; for parity checks against the CPU).
	GEMM string `json:"-"`
	// Recompute recomputes each layer's activations in the GPU backward (less memory; the same
	// results).
	Recompute bool `json:"-"`

	Out       string `json:"-"` // the run directory (required)
	Resume    bool   `json:"-"` // continue from the latest checkpoint in Out
	StopAfter int    `json:"-"` // stop (with a checkpoint) after this many steps in total
	// HeldoutProgress, when set, hears the tokens scored so far by the final evaluation.
	HeldoutProgress func(tokens int) `json:"-"`
}

// heldoutRecord is heldout.json: the evaluation (eval.PPLResult's fields) and what it measured.
type heldoutRecord struct {
	*eval.PPLResult
	Step      int `json:"step"`
	MaxTokens int `json:"max_tokens,omitempty"`
}

// Result is what Run reports.
type Result struct {
	Run     trainer.Result
	Heldout *eval.PPLResult // the final held-out evaluation; nil when none ran
	Cache   string          // the cache it ran with ("dmc" or "vanilla")
	Recipe  trainer.Recipe
	Source  string // the base checkpoint
}

// crNoteTolerance is how far the held-out real CR may be from the target before CRNote speaks.
const crNoteTolerance = 0.1

// CRNote says, when the final held-out evaluation of a DMC run compressed more than 10% away
// from the target, why (relaxed training decisions against hard inference ones) and what to
// do; "" otherwise.
func (r *Result) CRNote() string {
	if r.Heldout == nil || r.Recipe.Mode != trainer.ModeDMC || !(r.Recipe.TargetCR > 1) {
		return ""
	}
	real, target := r.Heldout.CR, r.Recipe.TargetCR
	if math.Abs(real/target-1) <= crNoteTolerance {
		return ""
	}
	return fmt.Sprintf("note: with hard decisions the model compresses held-out text %.2f× against the target %g× "+
		"(training merges a token with probability σ(a), inference when a > 0); train longer, or export with "+
		"dmc export --calibrate-cr, which moves the decision offset until held-out text compresses by %g×", real, target, target)
}

// Run trains as spec says and, when held-out data is available, evaluates the result with
// the real cache. Progress lines (the header, the trainer's progress) go to progress.
func Run(ctx context.Context, spec Spec, progress io.Writer) (_ *Result, err error) {
	if progress == nil {
		progress = io.Discard
	}
	if spec.Out == "" {
		return nil, errors.New("no run directory: pass --out DIR")
	}
	specPath := filepath.Join(spec.Out, SpecFile)
	_, statErr := os.Stat(spec.Out)
	group, inGroup, err := rankFromEnv()
	if err != nil {
		return nil, err
	}
	if inGroup && spec.Device != "cuda" {
		return nil, fmt.Errorf("rank %d of %d: a data-parallel group trains with --device cuda", group.rank, group.world)
	}
	unlock := func() {}
	if !inGroup { // in a group the launcher (dmc retrofit --gpus) holds the lock
		if unlock, err = lockRun(spec.Out); err != nil {
			return nil, err
		}
	}
	defer unlock()
	if statErr != nil { // a run refused before it wrote anything leaves no folder behind
		defer func() {
			if ents, _ := os.ReadDir(spec.Out); err != nil && len(ents) == 1 && ents[0].Name() == LockFile {
				os.RemoveAll(spec.Out)
			}
		}()
	}
	// --resume with only --out: the run's own spec (the CLI has done this already; then it is a no-op).
	if spec, err = ResumeSpec(spec, spec.Steps != 0); err != nil {
		return nil, err
	}
	if spec.Model == "" || spec.Data == "" {
		return nil, errors.New("--model and --data are required (or --resume with an existing --out)")
	}
	// Library callers get the same checks as the CLI, before any work.
	if err := Preflight(spec); err != nil {
		return nil, err
	}
	recipe, err := ResolveRecipe(spec)
	if err != nil {
		return nil, err
	}
	if RandomInit(spec) && recipe.DistillWeight > 0 {
		return nil, fmt.Errorf("--init random: the recipe distils from the initial weights (distill_weight %g), which are random; add --set distill_weight=0 or use a pre-training recipe (--config demo-pretrain)", recipe.DistillWeight)
	}
	w, src, err := initialWeights(spec, recipe.Seed)
	if err != nil {
		return nil, err
	}
	cfg := w.Config
	if recipe.SeqLen > cfg.MaxSeqLen {
		return nil, fmt.Errorf("recipe seq_len %d exceeds the model's context of %d tokens: use --set seq_len=%d or less", recipe.SeqLen, cfg.MaxSeqLen, cfg.MaxSeqLen)
	}
	ds, err := data.OpenWith(spec.Data, data.OpenOptions{Split: splitOf(spec.Data, "train")})
	if err != nil {
		return nil, err
	}
	tokPath := spec.Tokenizer
	if ds.Manifest != nil {
		if ds.Manifest.Tokenizer.VocabSize > cfg.VocabSize {
			return nil, fmt.Errorf("the shards in %s were tokenised with a %d-token vocabulary but the model has %d: re-run dmc data prepare with the model's tokenizer",
				spec.Data, ds.Manifest.Tokenizer.VocabSize, cfg.VocabSize)
		}
		if tokPath == "" {
			tokPath = ds.Manifest.Tokenizer.Path
		}
	}
	if err := autoTune(ctx, &recipe, w, ds, spec.Out, spec.Resume, progress); err != nil {
		return nil, err
	}
	dc := recipe.Config
	if err := dc.Validate(); err != nil {
		return nil, err
	}
	if err := dc.CheckHeadDim(cfg.HeadDim()); err != nil {
		return nil, err
	}
	source, err := newPackerSource(ds, data.PackerOptions{SeqLen: recipe.SeqLen, Shuffle: true, Seed: recipe.Seed})
	if err != nil {
		return nil, err
	}
	defer source.Close()
	// With distillation, w itself (as loaded, before any training or resume) is the frozen teacher.
	var teacher *model.Weights
	if recipe.DistillWeight > 0 {
		teacher = w
	}
	g, err := graph.NewExec(w, dc, recipe.MicroBatchSize(), recipe.SeqLen, graph.Options[float32]{Teacher: teacher, HeadCRCap: recipe.HeadCRCap})
	if err != nil {
		return nil, err
	}
	info := ModelInfo{Model: cfg, Base: absPath(src), Tokenizer: absPath(tokPath)}
	if old, err := OpenRun(spec.Out); err == nil && spec.Resume {
		// Runs written before paths were stored absolute keep their model.json as it was.
		if old.Model.Base == src {
			info.Base = src
		}
		if old.Model.Tokenizer == tokPath {
			info.Tokenizer = tokPath
		}
	}
	if recipe.Mode == trainer.ModeDMC {
		info.DMC, info.TargetCR = &dc, recipe.TargetCR
	}
	if err := os.MkdirAll(spec.Out, 0o755); err != nil {
		return nil, err
	}
	if !spec.Resume && group.rank == 0 {
		// Paths are stored absolute, so --resume, eval and export work from any directory.
		persisted := spec
		persisted.Tokenizer = tokPath
		for _, p := range []*string{&persisted.Model, &persisted.Weights, &persisted.Tokenizer, &persisted.Data, &persisted.Heldout, &persisted.Config} {
			*p = absPath(*p)
		}
		b, _ := json.MarshalIndent(persisted, "", "  ")
		if err := atomicfile.Write(specPath, append(b, '\n')); err != nil {
			return nil, err
		}
	}
	mode := "DMC retrofit to CR " + fmt.Sprint(recipe.TargetCR)
	if recipe.Mode == trainer.ModeControl {
		mode = "control run (no DMC)"
	}
	fmt.Fprintf(progress, "%s of %s (%s params): %d steps of %d×%d tokens, run dir %s\n",
		mode, src, HumanCount(cfg.NumParams()), recipe.TotalSteps(), recipe.BatchSize, recipe.SeqLen, spec.Out)
	if spec.Resume {
		if ck, err := (&RunDir{Dir: spec.Out}).store().OpenLatest(true, io.Discard); err == nil && ck.State.Step >= recipe.TotalSteps() {
			fmt.Fprintf(progress, "run %s is already finished at step %d; pass --steps M (> %d) with --resume to train further (the fine-tune stage is extended)\n",
				spec.Out, ck.State.Step, ck.State.Step)
		}
	}
	sel, err := TrainSelection(recipe.Train, g.Params(), cfg, dc)
	if err != nil {
		return nil, err
	}
	topts := trainer.Options{Train: sel,
		RunDir: spec.Out, Recipe: recipe, Model: g, Source: &vocabCheckedSource{source, cfg.VocabSize, spec.Data},
		ModelConfig: info, Resume: spec.Resume, StopAfter: spec.StopAfter, Progress: progress,
		OnZeroOutEnd: func(params []trainer.Param) error { return zeroDecisionRows(params, cfg, dc) },
	}
	heldout := heldoutOf(spec, ds.Manifest)
	if recipe.EvalEvery > 0 {
		// eval_every scores the same held-out windows each time, with hard decisions.
		if heldout == "" {
			return nil, fmt.Errorf("eval_every %d needs held-out data: pass --heldout, or prepare --data with a held-out split (dmc data prepare --heldout-frac or --heldout-files)", recipe.EvalEvery)
		}
		hds, err := data.OpenWith(heldout, data.OpenOptions{})
		if err != nil {
			return nil, err
		}
		evalSrc, err := newPackerSource(hds, data.PackerOptions{SeqLen: recipe.SeqLen, Seed: recipe.Seed})
		if err != nil {
			return nil, fmt.Errorf("eval_every: %w", err)
		}
		defer evalSrc.Close()
		topts.Eval = &vocabCheckedSource{evalSrc, cfg.VocabSize, heldout}
	}
	weights := g.Weights
	if spec.Device == "cuda" {
		dm, err := device.New(g, device.Options{Ordinal: group.rank, FP32GEMM: spec.GEMM == "fp32", Train: sel, Recompute: spec.Recompute})
		if err != nil {
			return nil, fmt.Errorf("--device cuda: %w", err)
		}
		defer dm.Close()
		topts.Model = dm
		if inGroup {
			if err := dm.JoinGroup(group.id, group.rank, group.world); err != nil {
				return nil, fmt.Errorf("rank %d of %d: join the NCCL group: %w", group.rank, group.world, err)
			}
			topts.Comm = dm.GroupComm()
		}
		topts.StepFLOPs = graph.StepFLOPs(cfg, recipe.MicroBatchSize(), recipe.SeqLen) * float64(recipe.GradAccum) / float64(group.world) // per GPU
		topts.PeakFLOPS = kernels.PeakBF16FLOPS(dm.Describe())
		if topts.PeakFLOPS > 0 {
			fmt.Fprintf(progress, "training on %s (MFU against %.0f TFLOP/s dense bf16)\n", dm.Describe(), topts.PeakFLOPS/1e12)
		} else {
			fmt.Fprintf(progress, "training on %s (its bf16 peak is unknown: set DMC_PEAK_TFLOPS for MFU figures)\n", dm.Describe())
		}
		weights = func() *model.Weights {
			w, err := dm.Weights()
			if err != nil {
				return g.Weights() // the last checkpoint's weights (the trainer pulled them to save it)
			}
			return w
		}
	}
	res, err := trainer.Run(ctx, topts)
	if err != nil {
		return nil, err
	}
	cache, _ := ChooseCache("auto", info.DMC)
	out := &Result{Run: res, Cache: cache.Name, Recipe: recipe, Source: src}
	if res.Interrupted || !res.Done || group.rank > 0 {
		return out, nil // rank 0 evaluates the group's model
	}
	if heldout != "" {
		hpath := filepath.Join(spec.Out, HeldoutFile)
		if b, err := os.ReadFile(hpath); err == nil && spec.Resume {
			// Already evaluated at this step with this limit (a resume of a finished run).
			rec := heldoutRecord{PPLResult: &eval.PPLResult{}}
			if json.Unmarshal(b, &rec) == nil && rec.Step == res.Step && rec.MaxTokens == spec.HeldoutTokens && rec.Tokens > 0 {
				out.Heldout = rec.PPLResult
				return out, nil
			}
		}
		hds, err := data.OpenWith(heldout, data.OpenOptions{})
		if err != nil {
			return out, err
		}
		where := ""
		if spec.Device == "cuda" {
			where = ", on the GPU"
		}
		fmt.Fprintf(progress, "held-out evaluation on %s (%s cache%s)\n", heldout, cache.Name, where)
		// Decode at the model's full context, as dmc eval does, so the two numbers agree; a GPU
		// run scores on the CUDA engine (dmc eval --device cuda).
		r, err := Perplexity(ctx, &Model{Weights: weights(), Source: spec.Out}, cache, hds.Documents(),
			eval.PPLOptions{MaxTokens: spec.HeldoutTokens, Progress: spec.HeldoutProgress}, spec.Device, heldoutBatch)
		if err != nil {
			return out, err
		}
		out.Heldout = r
		b, _ := json.MarshalIndent(heldoutRecord{PPLResult: r, Step: res.Step, MaxTokens: spec.HeldoutTokens}, "", "  ")
		_ = atomicfile.Write(hpath, append(b, '\n'))
	}
	return out, nil
}

// heldoutOf is the run's held-out data: --heldout, else the heldout split of --data when its
// manifest (m; nil for data that is not prepared shards) has one, else "".
func heldoutOf(spec Spec, m *data.Manifest) string {
	if spec.Heldout != "" {
		return spec.Heldout
	}
	if m != nil {
		if s, ok := m.Splits["heldout"]; ok && s.Docs > 0 {
			return spec.Data + ":heldout"
		}
	}
	return ""
}

// heldoutBatch is the number of sequences a GPU run's final evaluation decodes together.
const heldoutBatch = 64

// splitOf returns def when path is prepared shards with that split, else "" (all data).
func splitOf(path, def string) string {
	if m, err := data.ReadManifest(path); err == nil {
		if _, ok := m.Splits[def]; ok {
			return def
		}
	}
	return ""
}

// ResolveRecipe resolves spec's recipe: Config (default "default"), then TargetCR, Control,
// Set, the derived step counts, and Steps, which scales the stages; the result is validated.
func ResolveRecipe(spec Spec) (trainer.Recipe, error) {
	name := spec.Config
	if name == "" {
		name = "default"
	}
	r, err := trainer.LoadRecipe(name)
	if err != nil {
		return r, err
	}
	if spec.TargetCR != 0 {
		if !(spec.TargetCR >= 1) {
			return r, fmt.Errorf("--target-cr must be ≥ 1 (1 = no compression, 2 = half the KV cache), got %g", spec.TargetCR)
		}
		r.TargetCR = spec.TargetCR // stage lengths the recipe leaves at 0 are derived from it below
	}
	if spec.Control {
		r.Mode = trainer.ModeControl
	}
	if err := r.ApplyOverrides(spec.Set); err != nil {
		return r, err
	}
	r.Resolve()
	if spec.Steps < 0 {
		return r, fmt.Errorf("--steps must be positive, got %d", spec.Steps)
	}
	if spec.Steps > 0 {
		scaleStages(&r, spec.Steps)
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

// initialWeights are the weights a run starts from: the model's (Spec.Init "" or "weights"), or
// a random initialisation of its architecture drawn from seed (Spec.Init "random"), the same
// initialisation `dmc demo` pre-trains from.
func initialWeights(spec Spec, seed uint64) (*model.Weights, string, error) {
	if !RandomInit(spec) {
		return ResolveWeights(spec.Model, spec.Weights)
	}
	ci, err := LoadConfig(spec.Model)
	if err != nil {
		return nil, "", fmt.Errorf("--init random needs an architecture: %w", err)
	}
	w, err := model.RandomParams[float32](ci.Config, seed)
	if err != nil {
		return nil, "", err
	}
	return w, fmt.Sprintf("random initialisation (seed %d) of %s", seed, ci.Source), nil
}

// RandomInit reports whether spec trains from a random initialisation.
func RandomInit(spec Spec) bool { return spec.Init == "random" }
