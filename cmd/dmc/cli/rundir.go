package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

// runInfo is model.json of a run directory: what the run trains, so eval/export can rebuild it.
type runInfo struct {
	Model     model.Config `json:"model"`
	DMC       *dmc.Config  `json:"dmc,omitempty"` // nil for a control (vanilla) run
	TargetCR  float64      `json:"target_cr,omitempty"`
	Base      string       `json:"base"`      // checkpoint the run started from
	Tokenizer string       `json:"tokenizer"` // tokenizer of the training data
}

// isRunDir reports whether dir is a training run directory.
func isRunDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "checkpoints"))
	return err == nil
}

// loadRunDir reads the latest verified checkpoint of a run as inference weights.
func loadRunDir(dir string, warn io.Writer) (*model.Weights, *runInfo, *trainer.Checkpoint, error) {
	store := &trainer.CheckpointStore{FS: trainer.OSFS{}, Dir: filepath.Join(dir, "checkpoints"), Keep: 1 << 30}
	ck, err := store.OpenLatest(true, warn)
	if err != nil {
		if errors.Is(err, trainer.ErrNoCheckpoint) {
			return nil, nil, nil, fmt.Errorf("run %s has no checkpoint yet: let dmc retrofit reach its first checkpoint (checkpoint_every) or finish", dir)
		}
		return nil, nil, nil, err
	}
	var info runInfo
	if err := json.Unmarshal(ck.ModelConfig, &info); err != nil {
		return nil, nil, nil, fmt.Errorf("run %s: checkpoint %s has an unreadable model config: %w", dir, ck.Name, err)
	}
	w, err := model.NewParams[float32](info.Model)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("run %s: %w", dir, err)
	}
	f, err := checkpoints.OpenSafetensors(filepath.Join(ck.Path, "weights.safetensors"))
	if err != nil {
		return nil, nil, nil, err
	}
	defer f.Close()
	for _, t := range w.Tensors() {
		if err := f.ReadFloat32(t.Name, t.Data); err != nil {
			return nil, nil, nil, fmt.Errorf("run %s, checkpoint %s: %w", dir, ck.Name, err)
		}
	}
	return w, &info, ck, nil
}

// packerSource adapts a data.Packer to trainer.Source (the position is the packer's JSON).
type packerSource struct {
	ds   *data.Dataset
	opts data.PackerOptions
	p    *data.Packer
}

func newPackerSource(ds *data.Dataset, opts data.PackerOptions) (*packerSource, error) {
	p, err := data.NewPacker(ds, opts)
	if err != nil {
		return nil, err
	}
	return &packerSource{ds: ds, opts: opts, p: p}, nil
}

func (s *packerSource) Next() ([]int, error) {
	w, err := s.p.Next()
	return w.Tokens, err
}

func (s *packerSource) Position() json.RawMessage {
	b, _ := json.Marshal(s.p.Position())
	return b
}

func (s *packerSource) Seek(raw json.RawMessage) error {
	var pos data.Position
	if err := json.Unmarshal(raw, &pos); err != nil {
		return fmt.Errorf("data position in the checkpoint is unreadable: %w", err)
	}
	opts := s.opts
	opts.Resume = &pos
	p, err := data.NewPacker(s.ds, opts)
	if err != nil {
		return err
	}
	_ = s.p.Close()
	s.p = p
	return nil
}

func (s *packerSource) Close() error { return s.p.Close() }
