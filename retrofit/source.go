package retrofit

import (
	"encoding/json"
	"fmt"

	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

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
