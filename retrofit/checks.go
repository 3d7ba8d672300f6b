package retrofit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

// Checks of inputs that run before any work starts, so that a bad flag costs nothing.

// CheckWritable checks that a file can be written at p (the --json of eval and bench) before
// the work whose result it will hold: its folder must exist and accept a new file. flag names
// the option in the message.
func CheckWritable(p, flag string) error {
	if p == "" {
		return nil
	}
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return fmt.Errorf("%s %s is a directory: give a file name, e.g. %s", flag, p, filepath.Join(p, "result.json"))
	}
	dir := filepath.Dir(p)
	st, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s %s: the folder %s does not exist: create it (mkdir -p %s) or write elsewhere", flag, p, dir, dir)
		}
		return fmt.Errorf("%s %s: %w", flag, p, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s %s: %s is not a folder", flag, p, dir)
	}
	f, err := os.CreateTemp(dir, ".dmc-write-check-*")
	if err != nil {
		return fmt.Errorf("%s %s: cannot write in %s (%v): choose a writable folder", flag, p, dir, err)
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	return nil
}

// CheckDataPath checks that the data a flag names exists: a path, optionally with a
// ":SPLIT" suffix (prepared shards or a DatasetDict), or a hub dataset cached locally.
func CheckDataPath(p, flag string) error {
	if p == "" {
		return nil
	}
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if i := strings.LastIndex(p, ":"); i > 0 {
		if _, err := os.Stat(p[:i]); err == nil {
			return nil
		}
	}
	return fmt.Errorf("%s %s does not exist: pass prepared shards (dmc data prepare), an Arrow/HF dataset folder or a text file", flag, p)
}

// CheckSpec checks the numeric fields of a retrofit spec: a target CR that is finite and
// ≥ 1 (0 = the recipe's), and steps, stop-after and held-out tokens ≥ 0.
func CheckSpec(spec Spec) error {
	if cr := spec.TargetCR; cr != 0 && !(cr >= 1 && !math.IsInf(cr, 0)) {
		return fmt.Errorf("--target-cr must be ≥ 1 and finite (1 = no compression, 2 = half the KV cache), got %g", cr)
	}
	if spec.Steps < 0 {
		return fmt.Errorf("--steps must be ≥ 0 (0 = the recipe's stage lengths), got %d", spec.Steps)
	}
	if spec.StopAfter < 0 {
		return fmt.Errorf("--stop-after must be ≥ 0 (0 = run to the end), got %d", spec.StopAfter)
	}
	if spec.HeldoutTokens < 0 {
		return fmt.Errorf("--heldout-tokens must be ≥ 0 (0 = all held-out tokens), got %d", spec.HeldoutTokens)
	}
	switch spec.Init {
	case "", "weights", "random":
	default:
		return fmt.Errorf("--init %q: use weights (start from --model's weights) or random (pre-train --model's architecture from scratch)", spec.Init)
	}
	if RandomInit(spec) && spec.Weights != "" {
		return fmt.Errorf("--init random draws new weights: drop --weights %s", spec.Weights)
	}
	return nil
}

// Preflight checks what a retrofit needs before it loads weights or trains: the numeric
// fields, that --data exists, that --heldout opens, and that a given --tokenizer has the
// model's vocabulary. spec must be complete (for --resume, the output of ResumeSpec).
func Preflight(spec Spec) error {
	if err := CheckSpec(spec); err != nil {
		return err
	}
	if spec.Device == "cuda" {
		if err := kernels.Available(); err != nil {
			return fmt.Errorf("--device cuda: %w", err)
		}
	}
	if spec.Model == "" || spec.Data == "" {
		return nil // Run says what is missing
	}
	if err := CheckDataPath(spec.Data, "--data"); err != nil {
		return err
	}
	if spec.Heldout != "" {
		if err := CheckDataPath(spec.Heldout, "--heldout"); err != nil {
			return err
		}
		hds, err := data.OpenWith(spec.Heldout, data.OpenOptions{})
		if err != nil {
			return fmt.Errorf("--heldout %s: %w", spec.Heldout, err)
		}
		if err := hds.ColumnErr(); err != nil {
			return fmt.Errorf("--heldout %s: %w", spec.Heldout, err)
		}
	}
	// A preset's weights are looked for first (Run says where); for checkpoints the config is cheap.
	if _, perr := model.Preset(spec.Model); spec.Tokenizer != "" && perr != nil {
		info, err := LoadConfig(spec.Model)
		if err != nil {
			return err
		}
		vocab := info.Config.VocabSize
		if m, err := data.ReadManifest(spec.Data); err == nil && m.Tokenizer.VocabSize > vocab {
			return fmt.Errorf("the shards in %s were tokenised with a %d-token vocabulary but the model has %d: re-run dmc data prepare with the model's tokenizer",
				spec.Data, m.Tokenizer.VocabSize, vocab)
		}
		if _, err := LoadTokenizer(spec.Tokenizer, vocab); err != nil {
			return err
		}
	}
	return nil
}

// ResumeSpec completes the spec of `dmc retrofit --out DIR --resume` from the run's run.json.
// Flags given with --resume are kept: StopAfter, HeldoutTokens, and Steps when stepsGiven.
// A larger Steps extends the fine-tune stage of the run's resolved recipe (the earlier stages
// and their schedule stay as they were trained), and run.json is updated so later resumes
// keep the new total; a smaller one than the run's total is refused.
func ResumeSpec(spec Spec, stepsGiven bool) (Spec, error) {
	if !spec.Resume || spec.Model != "" || spec.Out == "" {
		return spec, nil
	}
	specPath := filepath.Join(spec.Out, SpecFile)
	s, err := ReadSpec(spec.Out)
	if err != nil {
		return spec, fmt.Errorf("--resume without --model needs %s (written when the run started): %w", specPath, err)
	}
	given := spec
	spec = *s
	spec.Out, spec.Resume, spec.StopAfter, spec.HeldoutProgress, spec.Device, spec.GEMM, spec.Recompute = given.Out, given.Resume, given.StopAfter, given.HeldoutProgress, given.Device, given.GEMM, given.Recompute
	if given.HeldoutTokens != 0 {
		spec.HeldoutTokens = given.HeldoutTokens
	}
	if !stepsGiven || given.Steps == 0 {
		return spec, nil
	}
	recipePath := filepath.Join(spec.Out, "recipe.yaml")
	r, err := trainer.LoadRecipe(recipePath)
	if err != nil {
		return spec, fmt.Errorf("--steps with --resume extends the run's recipe %s: %w", recipePath, err)
	}
	r.Resolve()
	total := r.TotalSteps()
	switch {
	case given.Steps == total:
		return spec, nil
	case given.Steps < total:
		return spec, fmt.Errorf("run %s has %d steps; --steps %d with --resume can only extend it: give --steps N with N > %d, or start a new run directory",
			spec.Out, total, given.Steps, total)
	}
	// Train on from the resolved recipe: its stages stay, the fine-tune stage grows.
	spec.Config, spec.Steps = absPath(recipePath), 0
	spec.Set = append(append([]string(nil), spec.Set...), fmt.Sprintf("fine_tune_steps=%d", r.FineTuneSteps+given.Steps-total))
	persisted := spec
	persisted.HeldoutProgress = nil
	if err := writeSpec(specPath, persisted); err != nil {
		return spec, err
	}
	return spec, nil
}

// writeSpec writes run.json atomically.
func writeSpec(p string, s Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(p, append(b, '\n'))
}
