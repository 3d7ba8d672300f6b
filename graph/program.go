package graph

import (
	"errors"
	"fmt"

	G "gorgonia.org/gorgonia"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/graph/ops"
)

// Program is one compiled variant of the training graph with the role of every node an
// executor must feed or read: the graph the tape machine runs, handed to another executor (the
// CUDA one) so that there is one definition of the model. Its nodes' ops are graph/ops' fused
// ops (ops.Describe) and a few gorgonia element-wise ops in the loss head and gradient sums.
type Program struct {
	Graph  *G.ExprGraph
	DMC    bool // the DMC variant (else plain: vanilla and stage 1)
	B, T   int
	Params []*G.Node // in Params() order
	// Grads[i] is the gradient of Loss with respect to Params[i]; nil for ForwardOnly graphs.
	Grads        []*G.Node
	IDs, Targets *G.Node   // int vectors [B·T]
	Noise        []*G.Node // per layer [B·T, Hkv] (DMC only), filled by Exec.NoiseInto
	// Scalar inputs (Exec.Inputs gives their values); LMWeight and KDWeight only with a teacher.
	ChScale, Hard, AlphaStar, CRWeight, LMWeight, KDWeight *G.Node
	TeacherLogits                                          *G.Node // [B·T, V], with a teacher
	// Outputs: KD only with a teacher, CR and MeanAlpha only in the DMC variant.
	Loss, LM, KD, CR, MeanAlpha, Logits *G.Node
}

// Program returns the compiled plain or DMC variant (built on first use, shared with Step).
func (e *Exec[T]) Program(useDMC bool) (*Program, error) {
	var err error
	if useDMC {
		if e.dmcv == nil {
			e.dmcv, err = e.build(true)
		}
		if err != nil {
			return nil, err
		}
		return &e.dmcv.prog, nil
	}
	if e.plain == nil {
		e.plain, err = e.build(false)
	}
	if err != nil {
		return nil, err
	}
	return &e.plain.prog, nil
}

// Teacher is the distillation teacher's forward-only executor (nil without one).
func (e *Exec[T]) Teacher() *Exec[T] { return e.teacher }

// ForwardOnly reports whether the executor was built without a backward pass.
func (e *Exec[T]) ForwardOnly() bool { return e.opt.ForwardOnly }

// Inputs are the values a run feeds the graph besides the tokens, derived from the step context
// exactly as Step does.
type Inputs struct {
	UseDMC                             bool // the DMC variant runs
	ChScale, Hard, AlphaStar, CRWeight float64
	LMWeight, KDWeight                 float64 // with a teacher: 1 − β and β
	Teacher                            bool    // the teacher's forward pass is needed (β > 0)
	Noise                              bool    // the noise inputs are used (DMC, soft decisions)
	ValidTargets                       int     // targets ≥ 0 (the loss's denominator)
}

// Inputs validates a micro-batch and a step context and returns what the run feeds the graph.
func (e *Exec[T]) Inputs(b Batch, sc StepContext) (Inputs, error) {
	c := e.cfg
	if b.BatchSize != e.B || b.SeqLen != e.T || len(b.Inputs) != e.B*e.T || len(b.Targets) != e.B*e.T {
		return Inputs{}, fmt.Errorf("graph: batch is %d×%d with %d inputs and %d targets, but the graph was built for %d×%d",
			b.BatchSize, b.SeqLen, len(b.Inputs), len(b.Targets), e.B, e.T)
	}
	for i, id := range b.Inputs {
		if id < 0 || id >= c.VocabSize {
			return Inputs{}, fmt.Errorf("graph: input token %d at index %d is outside the vocabulary [0, %d)", id, i, c.VocabSize)
		}
	}
	in := Inputs{UseDMC: sc.DMC && !(sc.ZeroOut < 1), ChScale: 1, AlphaStar: sc.TargetAlpha, CRWeight: sc.CRWeight}
	for i, id := range b.Targets {
		if id >= c.VocabSize {
			return Inputs{}, fmt.Errorf("graph: target token %d at index %d is outside the vocabulary [0, %d)", id, i, c.VocabSize)
		}
		if id >= 0 {
			in.ValidTargets++
		}
	}
	switch {
	case in.UseDMC:
		in.ChScale = 0
	case sc.ZeroOut < 1:
		in.ChScale = max(0, sc.ZeroOut)
	}
	switch {
	case sc.Hard:
		in.Hard = float64(ops.DecideHard)
	case sc.StraightThrough:
		in.Hard = float64(ops.DecideStraightThrough)
	}
	if d := sc.NoiseDamping; !(d >= 0 && d <= 1) {
		return Inputs{}, fmt.Errorf("graph: noise damping %g is outside [0, 1]", d)
	}
	if sc.DistillWeight != 0 && e.teacher == nil {
		return Inputs{}, errors.New("graph: a distillation weight was given but the graph has no teacher (Options.Teacher)")
	}
	if e.teacher != nil {
		beta := sc.DistillWeight
		if !(beta >= 0 && beta <= 1) {
			return Inputs{}, fmt.Errorf("graph: distillation weight %g is outside [0, 1]", beta)
		}
		in.Teacher, in.LMWeight, in.KDWeight = beta > 0, 1-beta, beta
	}
	in.Noise = in.UseDMC && in.Hard == float64(ops.DecideSoft)
	return in, nil
}

// NoiseKey is the key of layer l's Gumbel noise in the step context: element
// (b·Hkv + h)·T + t of its stream is the noise of sequence b, KV head h, position t.
func (e *Exec[T]) NoiseKey(sc StepContext, l int) dmc.NoiseKey {
	return dmc.NoiseKey{Seed: sc.Seed, Step: uint64(sc.Step), MicroBatch: uint64(sc.MicroBatch), Layer: uint64(l)}
}

// NoiseInto writes layer l's Gumbel noise of the step context into dst [B·T, Hkv] (row
// b·T + t, column h), from dmc.NoiseKey exactly as Step does.
// The noise is scaled by 1 − sc.NoiseDamping in float64 before the rounding to T, as the
// device kernel does.
func (e *Exec[T]) NoiseInto(dst []T, sc StepContext, l int) {
	Hkv, B, Tn := e.cfg.NKVHeads, e.B, e.T
	scale := NoiseScale(sc)
	e.NoiseKey(sc, l).Fill(e.noise) // element (b·Hkv + h)·T + t
	for b := 0; b < B; b++ {
		for h := 0; h < Hkv; h++ {
			for t := 0; t < Tn; t++ {
				dst[(b*Tn+t)*Hkv+h] = T(scale * e.noise[(b*Hkv+h)*Tn+t])
			}
		}
	}
}

// NoiseScale is the factor of the step's Gumbel noise, 1 − sc.NoiseDamping.
func NoiseScale(sc StepContext) float64 { return 1 - sc.NoiseDamping }
