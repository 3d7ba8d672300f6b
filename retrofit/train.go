package retrofit

import (
	"fmt"
	"sort"
	"strings"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
	"github.com/dmc-project/dmc/trainer/step"
)

// TrainSelection turns a recipe's train field into what each parameter (Hugging Face names, in
// params' order) has trained: nil for all; the q/k/v/o projections for attention; the W_q and
// W_k rows that produce the decision channel for decisions.
func TrainSelection(train string, params []trainer.Param, cfg model.Config, dc dmc.Config) ([]step.Trained, error) {
	switch train {
	case "", trainer.TrainAll:
		return nil, nil
	case trainer.TrainAttention, trainer.TrainDecisions:
	default:
		return nil, fmt.Errorf("unknown train %q: use all, attention or decisions", train)
	}
	D := cfg.HeadDim()
	if err := dc.CheckHeadDim(D); err != nil {
		return nil, err
	}
	ch := dc.Channel(D)
	rows := func(heads int) []int {
		r := make([]int, heads)
		for h := range r {
			r[h] = h*D + ch
		}
		sort.Ints(r)
		return r
	}
	out := make([]step.Trained, len(params))
	found := 0
	for i, p := range params {
		switch {
		case train == trainer.TrainAttention && strings.Contains(p.Name, ".self_attn.") && strings.HasSuffix(p.Name, "_proj.weight"):
			out[i] = step.Trained{All: true}
			found++
		case train == trainer.TrainDecisions && strings.HasSuffix(p.Name, ".self_attn.q_proj.weight"):
			out[i] = step.Trained{Rows: rows(cfg.NHeads)}
			found++
		case train == trainer.TrainDecisions && strings.HasSuffix(p.Name, ".self_attn.k_proj.weight"):
			out[i] = step.Trained{Rows: rows(cfg.NKVHeads)}
			found++
		}
	}
	if found == 0 {
		return nil, fmt.Errorf("train: %s selects no parameter of this model (no self_attn projections named as in Hugging Face Llama)", train)
	}
	return out, nil
}
