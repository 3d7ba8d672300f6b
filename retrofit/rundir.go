package retrofit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

// Files of a run directory (besides trainer's recipe.yaml, metrics.jsonl and checkpoints/).
const (
	SpecFile    = "run.json"     // the inputs of the run (Spec), so --resume needs only the directory
	ModelFile   = "model.json"   // what is trained (ModelInfo); also inside every checkpoint
	HeldoutFile = "heldout.json" // the final held-out evaluation (eval.PPLResult)
)

// ModelInfo is model.json of a run directory: what the run trains, so eval and export can
// rebuild it. Its JSON is compared byte for byte on resume, so fields are only ever added.
type ModelInfo struct {
	Model     model.Config `json:"model"`
	DMC       *dmc.Config  `json:"dmc,omitempty"` // nil for a control (vanilla) run
	TargetCR  float64      `json:"target_cr,omitempty"`
	Base      string       `json:"base"`      // checkpoint the run started from
	Tokenizer string       `json:"tokenizer"` // tokenizer of the training data
}

// RunDir is an opened run directory.
type RunDir struct {
	Dir   string
	Spec  *Spec     // run.json; nil for runs written before it existed
	Model ModelInfo // model.json (or, when absent, the latest checkpoint's copy)
}

// IsRunDir reports whether dir is a training run directory.
func IsRunDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "checkpoints"))
	return err == nil
}

// OpenRun reads a run directory's run.json and model.json.
func OpenRun(dir string) (*RunDir, error) {
	if !IsRunDir(dir) {
		return nil, fmt.Errorf("%s is not a retrofit run directory (no checkpoints/ inside): pass the --out of dmc retrofit", dir)
	}
	rd := &RunDir{Dir: dir}
	if s, err := ReadSpec(dir); err == nil {
		rd.Spec = s
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, ModelFile)); err == nil {
		if err := json.Unmarshal(b, &rd.Model); err != nil {
			return nil, fmt.Errorf("%s is unreadable: %w", filepath.Join(dir, ModelFile), err)
		}
	}
	return rd, nil
}

// ReadSpec reads dir/run.json.
func ReadSpec(dir string) (*Spec, error) {
	p := filepath.Join(dir, SpecFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s is unreadable: %w", p, err)
	}
	return &s, nil
}

func (rd *RunDir) store() *trainer.CheckpointStore {
	return &trainer.CheckpointStore{FS: trainer.OSFS{}, Dir: filepath.Join(rd.Dir, "checkpoints"), Keep: 1 << 30}
}

// LatestWeights reads the latest verified checkpoint as inference weights; warn hears of
// skipped corrupt checkpoints. It returns the checkpoint's name and refreshes rd.Model from it.
func (rd *RunDir) LatestWeights(warn io.Writer) (*model.Weights, string, error) {
	w, ck, err := rd.latest(warn)
	if err != nil {
		return nil, "", err
	}
	return w, ck.Name, nil
}

func (rd *RunDir) latest(warn io.Writer) (*model.Weights, *trainer.Checkpoint, error) {
	ck, err := rd.store().OpenLatest(true, warn)
	if err != nil {
		if errors.Is(err, trainer.ErrNoCheckpoint) {
			return nil, nil, fmt.Errorf("run %s has no checkpoint yet: let dmc retrofit reach its first checkpoint (checkpoint_every) or finish", rd.Dir)
		}
		return nil, nil, err
	}
	var info ModelInfo
	if err := json.Unmarshal(ck.ModelConfig, &info); err != nil {
		return nil, nil, fmt.Errorf("run %s: checkpoint %s has an unreadable model config: %w", rd.Dir, ck.Name, err)
	}
	rd.Model = info
	w, err := model.NewParams[float32](info.Model)
	if err != nil {
		return nil, nil, fmt.Errorf("run %s: %w", rd.Dir, err)
	}
	f, err := checkpoints.OpenSafetensors(filepath.Join(ck.Path, "weights.safetensors"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	for _, t := range w.Tensors() {
		if err := f.ReadFloat32(t.Name, t.Data); err != nil {
			return nil, nil, fmt.Errorf("run %s, checkpoint %s: %w", rd.Dir, ck.Name, err)
		}
	}
	return w, ck, nil
}
