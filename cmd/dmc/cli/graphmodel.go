package cli

import (
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/trainer"
)

// graphModel lets the trainer drive the Gorgonia training graph (the two packages declare the
// same contract independently so neither depends on the other).
type graphModel struct{ g *graph.Graph }

// newGraphModel builds the training graph of w; with distill, w itself (as loaded, before any
// training or resume) is also the frozen distillation teacher.
func newGraphModel(w *model.Weights, dc dmc.Config, batch, seqLen int, distill bool) (*graphModel, error) {
	var teacher *model.Weights
	if distill {
		teacher = w
	}
	g, err := graph.NewExec(w, dc, batch, seqLen, graph.Options[float32]{Teacher: teacher})
	if err != nil {
		return nil, err
	}
	return &graphModel{g}, nil
}

func (m *graphModel) Params() []trainer.Param {
	ps := m.g.Params()
	out := make([]trainer.Param, len(ps))
	for i, p := range ps {
		out[i] = trainer.Param{Name: p.Name, Shape: p.Shape, Value: p.Value, Grad: p.Grad}
	}
	return out
}

func toGraph(b trainer.Batch, sc trainer.StepContext) (graph.Batch, graph.StepContext) {
	return graph.Batch{Inputs: b.Inputs, Targets: b.Targets, BatchSize: b.BatchSize, SeqLen: b.SeqLen},
		graph.StepContext{Step: sc.Step, MicroBatch: sc.MicroBatch, Seed: sc.Seed, DMC: sc.DMC, TargetAlpha: sc.TargetAlpha,
			ZeroOut: sc.ZeroOut, Hard: sc.Hard, CRWeight: sc.CRWeight, DistillWeight: sc.DistillWeight}
}

func fromGraph(l graph.Losses) trainer.Losses {
	return trainer.Losses{Loss: l.Loss, LM: l.LM, CR: l.CR, MeanAlpha: l.MeanAlpha, KD: l.KD, Tokens: l.Tokens}
}

func (m *graphModel) Step(b trainer.Batch, sc trainer.StepContext) (trainer.Losses, error) {
	gb, gs := toGraph(b, sc)
	l, err := m.g.Step(gb, gs)
	return fromGraph(l), err
}

func (m *graphModel) Forward(b trainer.Batch, sc trainer.StepContext) (trainer.Losses, error) {
	gb, gs := toGraph(b, sc)
	l, err := m.g.Forward(gb, gs)
	return fromGraph(l), err
}

// weights copies the current values out as inference weights.
func (m *graphModel) weights() *model.Weights { return m.g.Weights() }
