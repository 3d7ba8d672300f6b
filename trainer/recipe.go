package trainer

import (
	"bytes"
	"flag"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/dmc-project/dmc/configs"
	"github.com/dmc-project/dmc/dmc"
)

// Modes and LR schedules a recipe can name.
const (
	ModeDMC     = "dmc"     // three-stage DMC retrofit
	ModeControl = "control" // same steps, data and LR, DMC off throughout

	LRStages   = "stages"   // warmup, constant in stages 1-2, cosine over stage 3
	LRConstant = "constant" // warmup, then constant
	LRCosine   = "cosine"   // warmup, then cosine over the rest of the run
)

// Recipe is a retrofit recipe (configs/recipes/*.yaml). Every recipe is read on top of the
// embedded default.yaml, so a file only states what differs; the resolved recipe (defaults +
// file + overrides + derived step counts) is written into the run directory.
type Recipe struct {
	Name     string  `yaml:"name"`
	Mode     string  `yaml:"mode"`      // dmc | control
	TargetCR float64 `yaml:"target_cr"` // final compression rate CR_t ≥ 1

	// Stages (optimiser steps).
	ZeroOutSteps     int     `yaml:"zero_out_steps"`      // S1
	ZeroOutDecayFrac float64 `yaml:"zero_out_decay_frac"` // the 0.8 of max(0, 1 − s/(0.8·S1))
	RampSteps        int     `yaml:"ramp_steps"`          // S_ramp; 0: ramp_steps_per_cr·(target_cr − 1)
	RampStepsPerCR   int     `yaml:"ramp_steps_per_cr"`   // reference: ~6000 for Llama 2 7B
	RetrofitSteps    int     `yaml:"retrofit_steps"`      // stage 2 length; 0: ramp_steps
	FineTuneSteps    int     `yaml:"fine_tune_steps"`     // stage 3 length
	// FineTuneDecisions is how stage 3 decides: soft (the reference: Gumbel-sigmoid with
	// noise, as in stage 2), hard (straight-through: the forward pass makes exactly the hard,
	// noiseless decisions of inference, the backward pass takes the gradient of σ(a)) or anneal
	// (soft decisions whose noise shrinks linearly to none at the last step: the decisions
	// approach inference's while the gradients stay those of soft decisions).
	FineTuneDecisions string `yaml:"fine_tune_decisions"`

	// Batch: batch_size sequences of seq_len tokens per optimiser step, split into grad_accum
	// micro-batches of batch_size/grad_accum sequences.
	SeqLen    int `yaml:"seq_len"`
	BatchSize int `yaml:"batch_size"`
	GradAccum int `yaml:"grad_accum"`

	// Optimiser (AdamW) and LR schedule.
	LR          float64 `yaml:"lr"`
	LRSchedule  string  `yaml:"lr_schedule"` // stages | constant | cosine
	LRFinalFrac float64 `yaml:"lr_final_frac"`
	WarmupSteps int     `yaml:"warmup_steps"`
	WeightDecay float64 `yaml:"weight_decay"`
	Beta1       float64 `yaml:"beta1"`
	Beta2       float64 `yaml:"beta2"`
	Eps         float64 `yaml:"eps"`
	GradClip    float64 `yaml:"grad_clip"` // global-norm clip; 0 disables

	// DMC knobs (dmc-spec.md §2, §4, §5): window, temperature, decision_channel,
	// decision_offset, importance_offset, inline in the YAML. This one value goes to the
	// training graph, the run's model.json, the export's dmc block and the CUDA engine.
	dmc.Config `yaml:",inline"`
	// AutoChannel picks decision_channel at the start of a fresh run: the channel whose removal
	// costs the base model least on the training data (retrofit's channel ablation). AutoOffset
	// sets decision_offset from the target CR (dmc.AutoDecisionOffset). A recipe file or --set
	// that states decision_channel / decision_offset turns the matching one off.
	AutoChannel  bool    `yaml:"auto_channel"`
	AutoOffset   bool    `yaml:"auto_offset"`
	CRLossWeight float64 `yaml:"cr_loss_weight"` // λ
	// HeadCRCap, when > 0, adds to the CR loss (same λ) a hinge on every KV head's merge rate
	// per sequence above 1 − 1/head_cr_cap, so that no head compresses beyond the cap (without
	// it some heads merge nearly every token). 0: off (the reference).
	HeadCRCap float64 `yaml:"head_cr_cap"`
	// DistillWeight β replaces part of the LM loss by distillation from the original model:
	// L_LM = (1−β)·CE + β·KL(original ‖ model), in every stage and in control runs too. 0 is
	// the reference (plain CE); DMS (arXiv 2506.05345) retrofits with β = 1.
	DistillWeight float64 `yaml:"distill_weight"`
	// Train is what the retrofit updates: all (the reference), attention (the q, k, v and o
	// projections) or decisions (only the W_q/W_k rows that produce the decision channel: the
	// cheap, DMS-like retrofit). The optimiser keeps moments only for what is trained.
	Train string `yaml:"train"`

	// Bookkeeping.
	CheckpointEvery int    `yaml:"checkpoint_every"` // 0: only at the end and on interruption
	KeepCheckpoints int    `yaml:"keep_checkpoints"` // newest K kept
	LogEvery        int    `yaml:"log_every"`        // progress line every N steps
	EvalEvery       int    `yaml:"eval_every"`       // held-out evaluation every N steps; 0 = off
	EvalBatches     int    `yaml:"eval_batches"`     // batches of batch_size/grad_accum sequences per evaluation
	Seed            uint64 `yaml:"seed"`
}

// The values of Recipe.FineTuneDecisions.
const (
	DecisionsSoft   = "soft"
	DecisionsHard   = "hard"
	DecisionsAnneal = "anneal"
)

// The values of Recipe.Train.
const (
	TrainAll       = "all"
	TrainAttention = "attention"
	TrainDecisions = "decisions"
)

// DefaultRecipe is the embedded default.yaml, already resolved.
func DefaultRecipe() (Recipe, error) { return LoadRecipe("default") }

// LoadRecipe reads a recipe from a YAML file path, or an embedded recipe by name
// (configs/recipes/NAME.yaml), on top of the defaults. The result is not validated, so that
// overrides can still be applied; call Validate before use.
func LoadRecipe(nameOrPath string) (Recipe, error) {
	var b []byte
	var err error
	if strings.ContainsAny(nameOrPath, `/\`) || strings.HasSuffix(nameOrPath, ".yaml") || strings.HasSuffix(nameOrPath, ".yml") {
		b, err = os.ReadFile(nameOrPath)
		if err != nil {
			return Recipe{}, fmt.Errorf("read recipe: %w (give a YAML file or one of the built-in recipes: %s)", err, strings.Join(configs.Names("recipes"), ", "))
		}
	} else if b, err = configs.Read("recipes", nameOrPath); err != nil {
		return Recipe{}, fmt.Errorf("%w; or give the path of a YAML file", err)
	}
	return ParseRecipe(b)
}

// ParseRecipe parses YAML on top of the embedded defaults. Unknown fields are errors naming the
// field. Derived step counts left at 0 stay 0 (so that overrides of target_cr or
// ramp_steps_per_cr still take effect); the result is not validated.
func ParseRecipe(b []byte) (Recipe, error) {
	base, err := configs.Read("recipes", "default")
	if err != nil {
		return Recipe{}, fmt.Errorf("embedded default recipe missing: %w", err)
	}
	var r Recipe
	if err := decodeStrict(base, &r); err != nil {
		return Recipe{}, fmt.Errorf("embedded default recipe: %w", err)
	}
	if err := decodeStrict(b, &r); err != nil {
		return Recipe{}, err
	}
	return r, nil
}

// decodeStrict decodes a YAML mapping into r, rejecting unknown keys with a message that names
// the key, its line and the known keys.
func decodeStrict(b []byte, r *Recipe) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("parse recipe: %w", err)
	}
	if len(doc.Content) == 0 {
		return nil // empty file: nothing to override
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("parse recipe: line %d: expected a mapping of field: value", root.Line)
	}
	known := recipeKeys()
	for i := 0; i < len(root.Content); i += 2 {
		k := root.Content[i]
		if _, ok := known[k.Value]; !ok {
			return fmt.Errorf("recipe: unknown field %q at line %d (known fields: %s)", k.Value, k.Line, strings.Join(sortedKeys(known), ", "))
		}
	}
	if err := root.Decode(r); err != nil {
		return fmt.Errorf("parse recipe: %w", err)
	}
	given := map[string]bool{}
	for i := 0; i < len(root.Content); i += 2 {
		given[root.Content[i].Value] = true
	}
	r.explicit(given)
	return nil
}

// explicit turns the automatic choice of a DMC setting off when that setting is given
// (without its auto_ key also being given).
func (r *Recipe) explicit(given map[string]bool) {
	if given["decision_channel"] && !given["auto_channel"] {
		r.AutoChannel = false
	}
	if given["decision_offset"] && !given["auto_offset"] {
		r.AutoOffset = false
	}
}

// Ramp is S_ramp: ramp_steps, or when that is 0, ramp_steps_per_cr·(target_cr − 1).
func (r *Recipe) Ramp() int {
	if r.RampSteps != 0 || r.TargetCR <= 1 {
		return r.RampSteps
	}
	return int(math.Round(float64(r.RampStepsPerCR) * (r.TargetCR - 1)))
}

// Retrofit is the length of stage 2: retrofit_steps, or when that is 0, Ramp().
func (r *Recipe) Retrofit() int {
	if r.RetrofitSteps != 0 {
		return r.RetrofitSteps
	}
	return r.Ramp()
}

// Resolve writes the derived step counts (Ramp, Retrofit) into ramp_steps and retrofit_steps,
// so that the recipe written into a run directory states them. It is idempotent, and the
// schedule is the same before and after.
func (r *Recipe) Resolve() {
	r.RampSteps, r.RetrofitSteps = r.Ramp(), r.Retrofit()
}

// Validate checks every field and reports all problems at once, each with the fix.
func (r *Recipe) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if r.Mode != ModeDMC && r.Mode != ModeControl {
		bad("mode must be %q or %q, got %q", ModeDMC, ModeControl, r.Mode)
	}
	switch r.Train {
	case "", TrainAll, TrainAttention, TrainDecisions:
	default:
		bad("train must be %s, %s or %s, got %q", TrainAll, TrainAttention, TrainDecisions, r.Train)
	}
	if !(r.TargetCR >= 1) || math.IsInf(r.TargetCR, 0) {
		bad("target CR must be ≥ 1 (1 = no compression, 2 = half the KV cache), got %g", r.TargetCR)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"zero_out_steps", r.ZeroOutSteps}, {"ramp_steps", r.RampSteps}, {"ramp_steps_per_cr", r.RampStepsPerCR},
		{"retrofit_steps", r.RetrofitSteps}, {"fine_tune_steps", r.FineTuneSteps}, {"warmup_steps", r.WarmupSteps},
		{"window", r.Window}, {"checkpoint_every", r.CheckpointEvery}, {"eval_every", r.EvalEvery}} {
		if f.v < 0 {
			bad("%s must be ≥ 0, got %d", f.name, f.v)
		}
	}
	if r.TotalSteps() <= 0 {
		bad("the recipe has no steps: set zero_out_steps, retrofit_steps (or ramp_steps / ramp_steps_per_cr with target_cr > 1) or fine_tune_steps")
	}
	if r.Mode == ModeDMC && r.TotalSteps() > 0 && r.Retrofit()+r.FineTuneSteps == 0 {
		bad("the recipe ends inside the zero-out stage (%d steps), so DMC never trains: give retrofit_steps or fine_tune_steps, or use mode: control", r.ZeroOutSteps)
	}
	if r.Retrofit() < r.Ramp() {
		bad("retrofit_steps (%d) must be ≥ ramp_steps (%d) so that the target CR is reached before the fine-tune stage", r.Retrofit(), r.Ramp())
	}
	if r.Mode == ModeDMC && r.ZeroOutSteps > 0 && !(r.ZeroOutDecayFrac > 0 && r.ZeroOutDecayFrac <= 1) {
		bad("zero_out_decay_frac must be in (0, 1], got %g (reference: 0.8)", r.ZeroOutDecayFrac)
	}
	if !(r.DistillWeight >= 0 && r.DistillWeight <= 1) {
		bad("distill_weight must be in [0, 1] (0 = plain cross-entropy, 1 = distillation only), got %g", r.DistillWeight)
	}
	if r.SeqLen <= 0 {
		bad("seq_len must be > 0, got %d", r.SeqLen)
	}
	if r.BatchSize <= 0 {
		bad("batch_size must be > 0, got %d", r.BatchSize)
	}
	if r.GradAccum <= 0 {
		bad("grad_accum must be ≥ 1, got %d", r.GradAccum)
	} else if r.BatchSize > 0 && r.BatchSize%r.GradAccum != 0 {
		bad("batch_size (%d) must be a multiple of grad_accum (%d): each micro-batch has batch_size/grad_accum sequences", r.BatchSize, r.GradAccum)
	}
	if !(r.LR > 0) || math.IsInf(r.LR, 0) {
		bad("lr must be > 0, got %g", r.LR)
	}
	if h := r.HeadCRCap; h != 0 && !(h >= r.TargetCR && h > 1 && !math.IsInf(h, 0)) {
		bad("head_cr_cap must be 0 (off) or a finite compression rate of at least target_cr (%g), got %g", r.TargetCR, h)
	}
	if r.FineTuneDecisions != DecisionsSoft && r.FineTuneDecisions != DecisionsHard && r.FineTuneDecisions != DecisionsAnneal {
		bad("fine_tune_decisions must be %q (the reference), %q (straight-through hard decisions in stage 3) or %q (the noise annealed away over stage 3), got %q",
			DecisionsSoft, DecisionsHard, DecisionsAnneal, r.FineTuneDecisions)
	}
	if r.LRSchedule != LRStages && r.LRSchedule != LRConstant && r.LRSchedule != LRCosine {
		bad("lr_schedule must be %q, %q or %q, got %q", LRStages, LRConstant, LRCosine, r.LRSchedule)
	}
	if !(r.LRFinalFrac >= 0 && r.LRFinalFrac <= 1) {
		bad("lr_final_frac must be in [0, 1], got %g", r.LRFinalFrac)
	}
	if !(r.WeightDecay >= 0) {
		bad("weight_decay must be ≥ 0, got %g", r.WeightDecay)
	}
	if !(r.Beta1 >= 0 && r.Beta1 < 1) {
		bad("beta1 must be in [0, 1), got %g", r.Beta1)
	}
	if !(r.Beta2 >= 0 && r.Beta2 < 1) {
		bad("beta2 must be in [0, 1), got %g", r.Beta2)
	}
	if !(r.Eps > 0) {
		bad("eps must be > 0, got %g", r.Eps)
	}
	if !(r.GradClip >= 0) {
		bad("grad_clip must be ≥ 0 (0 disables clipping), got %g", r.GradClip)
	}
	if math.IsNaN(r.DecisionOffset) || math.IsInf(r.DecisionOffset, 0) || math.IsNaN(r.ImportanceOffset) || math.IsInf(r.ImportanceOffset, 0) {
		bad("decision_offset and importance_offset must be finite numbers (reference: 5)")
	}
	if !(r.Temperature > 0) {
		bad("temperature must be > 0, got %g", r.Temperature)
	}
	if !(r.CRLossWeight >= 0) {
		bad("cr_loss_weight must be ≥ 0, got %g", r.CRLossWeight)
	}
	if r.KeepCheckpoints < 1 {
		bad("keep_checkpoints must be ≥ 1, got %d", r.KeepCheckpoints)
	}
	if r.EvalEvery > 0 && r.EvalBatches < 1 {
		bad("eval_batches must be ≥ 1 when eval_every is set, got %d", r.EvalBatches)
	}
	if r.LogEvery < 1 {
		bad("log_every must be ≥ 1, got %d", r.LogEvery)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("recipe %q is invalid:\n  - %s", r.Name, strings.Join(errs, "\n  - "))
}

// MicroBatchSize is the number of sequences per model Step.
func (r *Recipe) MicroBatchSize() int { return r.BatchSize / r.GradAccum }

// TokensPerStep is the number of predicted tokens per optimiser step.
func (r *Recipe) TokensPerStep() int { return r.BatchSize * r.SeqLen }

// YAML renders the recipe (all fields) as YAML.
func (r *Recipe) YAML() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Set overrides one field by its YAML name (e.g. "lr", "target_cr"; dashes are accepted for
// underscores), parsing value as YAML of the field's type.
func (r *Recipe) Set(key, value string) error {
	key = strings.ReplaceAll(key, "-", "_")
	known := recipeKeys()
	idx, ok := known[key]
	if !ok {
		return fmt.Errorf("unknown recipe field %q (known fields: %s)", key, strings.Join(sortedKeys(known), ", "))
	}
	f := reflect.ValueOf(r).Elem().FieldByIndex(idx)
	nv := reflect.New(f.Type())
	if err := yaml.Unmarshal([]byte(value), nv.Interface()); err != nil {
		return fmt.Errorf("recipe field %s: cannot use %q as a %s", key, value, f.Type())
	}
	f.Set(nv.Elem())
	r.explicit(map[string]bool{key: true})
	return nil
}

// ApplyOverrides applies "key=value" overrides in order.
func (r *Recipe) ApplyOverrides(kvs []string) error {
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("override %q: want key=value, e.g. lr=1e-4", kv)
		}
		if err := r.Set(strings.TrimSpace(k), strings.TrimSpace(v)); err != nil {
			return err
		}
	}
	return nil
}

// Overrides collects recipe overrides from command-line flags: Register adds one flag per
// recipe field (named like the YAML key with dashes, e.g. --target-cr, --lr) to a standard
// flag.FlagSet (cobra commands add it with cmd.Flags().AddGoFlagSet(fs)); Apply writes the
// flags that were given, in command-line order, into a recipe.
type Overrides struct{ kvs []string }

type overrideFlag struct {
	o   *Overrides
	key string
}

func (f overrideFlag) String() string { return "" }
func (f overrideFlag) Set(v string) error {
	// Type-check early so the flag parser reports the bad value with the flag's name.
	var probe Recipe
	if err := probe.Set(f.key, v); err != nil {
		return err
	}
	f.o.kvs = append(f.o.kvs, f.key+"="+v)
	return nil
}

// Register adds the recipe flags to fs, each name prefixed by prefix (may be empty).
func (o *Overrides) Register(fs *flag.FlagSet, prefix string) {
	t := reflect.TypeOf(Recipe{})
	keys := recipeKeys()
	for _, key := range sortedKeys(keys) {
		fs.Var(overrideFlag{o, key}, prefix+strings.ReplaceAll(key, "_", "-"),
			fmt.Sprintf("recipe override: %s (%s)", key, t.FieldByIndex(keys[key]).Type))
	}
}

// Apply writes the collected overrides into r.
func (o *Overrides) Apply(r *Recipe) error { return r.ApplyOverrides(o.kvs) }

// Given lists the overrides collected so far as key=value.
func (o *Overrides) Given() []string { return append([]string(nil), o.kvs...) }

// recipeKeys maps every YAML key of Recipe, including those of inline structs (dmc.Config),
// to its field's index path.
func recipeKeys() map[string][]int {
	m := map[string][]int{}
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			idx := append(append([]int(nil), prefix...), i)
			tag := f.Tag.Get("yaml")
			if _, opts, _ := strings.Cut(tag, ","); f.Anonymous && strings.Contains(opts, "inline") {
				walk(f.Type, idx)
				continue
			}
			m[yamlKey(f)] = idx
		}
	}
	walk(reflect.TypeOf(Recipe{}), nil)
	return m
}

func yamlKey(f reflect.StructField) string {
	k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if k == "" {
		panic("trainer: Recipe field " + f.Name + " has no yaml tag")
	}
	return k
}

func sortedKeys(m map[string][]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func yamlUnmarshal(b []byte, v any) error { return yaml.Unmarshal(b, v) }
