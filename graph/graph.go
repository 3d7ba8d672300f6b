package graph

import (
	"errors"
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer/step"
)

// The step contract (package step): the graph is a step.Model, driven by the trainer as is.
type (
	Param       = step.Param
	Batch       = step.Batch
	StepContext = step.Context
	Losses      = step.Losses
)

// Graph is the float32 training graph; it implements step.Model.
type Graph = Exec[float32]

// Graph64 is the float64 graph used by exactness and gradient tests.
type Graph64 = Exec[float64]

var _ step.Model = (*Graph)(nil)

// New builds the float32 training graph of p (copied) for micro-batches of batch sequences of
// seqLen tokens.
func New(p *model.Weights, dc dmc.Config, batch, seqLen int) (*Graph, error) {
	return NewExec(p, dc, batch, seqLen, Options[float32]{})
}

// NewDistill builds the float32 training graph of p with teacher as the frozen distillation
// teacher (usually the same checkpoint, before any training).
func NewDistill(p, teacher *model.Weights, dc dmc.Config, batch, seqLen int) (*Graph, error) {
	return NewExec(p, dc, batch, seqLen, Options[float32]{Teacher: teacher})
}

// New64 builds the float64 graph (tests).
func New64(p *model.Params[float64], dc dmc.Config, batch, seqLen int, opt Options[float64]) (*Graph64, error) {
	return NewExec(p, dc, batch, seqLen, opt)
}

// Options are build options beyond the trainer's needs.
type Options[T model.Float] struct {
	// KeepLogits copies the logits [B·T, V] out of every run (see Logits); it costs one copy of
	// the logits per step.
	KeepLogits bool
	// Teacher, when set, is a frozen copy of a model (the original checkpoint) whose plain
	// forward pass gives the targets of the distillation loss (StepContext.DistillWeight).
	Teacher *model.Params[T]
	// ForwardOnly builds no backward pass and no gradient buffers: Step fails and only Forward
	// runs (the distillation teacher).
	ForwardOnly bool
	// HeadCRCap, when > 0, adds to the CR loss the mean over layers, sequences and KV heads of
	// max(0, ᾱ_{b,l,h} − (1 − 1/HeadCRCap)), ᾱ_{b,l,h} the straight-through hard merge rate of
	// one head on one sequence: no head is pushed to compress beyond the cap.
	HeadCRCap float64
}

// param is one parameter: its graph tensor and the gradient buffer it is read into.
type param[T model.Float] struct {
	name  string
	shape []int
	value *tensor.Dense
	grad  *tensor.Dense
	gradV G.Value // the Read target (aliases grad)
}

// Exec holds the parameters and up to two graphs over them: the plain one (vanilla and
// stage 1) and the DMC one, each built on first use.
type Exec[T model.Float] struct {
	cfg    model.Config
	dc     dmc.Config
	ch     int
	B, T   int
	opt    Options[T]
	params []*param[T]
	// teacher is the distillation teacher's plain forward graph (Options.Teacher), logits kept.
	teacher *Exec[T]
	byName  map[string]*param[T]
	w       *model.Params[T] // views of the parameter tensors, for Weights
	plain   *variant[T]
	dmcv    *variant[T]
	// lastRun is the variant of the latest Step or Forward (for Logits).
	lastRun *variant[T]
	noise   []float64
}

// NewExec builds an executor for element type T.
func NewExec[T model.Float](p *model.Params[T], dc dmc.Config, batch, seqLen int, opt Options[T]) (*Exec[T], error) {
	if err := p.CheckShapes(); err != nil {
		return nil, err
	}
	if err := dc.Validate(); err != nil {
		return nil, err
	}
	c := p.Config
	if err := dc.CheckHeadDim(c.HeadDim()); err != nil {
		return nil, err
	}
	if batch <= 0 || seqLen <= 0 {
		return nil, fmt.Errorf("graph: batch size %d and sequence length %d must be positive", batch, seqLen)
	}
	if seqLen > c.MaxSeqLen {
		return nil, fmt.Errorf("graph: sequence length %d exceeds the model's max_seq_len %d; use a shorter --seq-len", seqLen, c.MaxSeqLen)
	}
	if h := opt.HeadCRCap; !(h == 0 || h > 1) || math.IsInf(h, 0) {
		return nil, fmt.Errorf("graph: per-head CR cap %g must be 0 (off) or a finite compression rate above 1", h)
	}
	e := &Exec[T]{cfg: c, dc: dc, ch: dc.Channel(c.HeadDim()), B: batch, T: seqLen, opt: opt, byName: map[string]*param[T]{}}
	// Own copy of the weights; the graph's tensors are backed by it.
	w, err := model.NewParams[T](c)
	if err != nil {
		return nil, err
	}
	src, dst := p.Tensors(), w.Tensors()
	for i := range src {
		copy(dst[i].Data, src[i].Data)
	}
	e.w = w
	for _, t := range dst {
		pr := &param[T]{name: t.Name, shape: t.Shape,
			value: tensor.New(tensor.WithShape(t.Shape...), tensor.WithBacking(t.Data))}
		if !opt.ForwardOnly {
			pr.grad = tensor.New(tensor.WithShape(t.Shape...), tensor.WithBacking(make([]T, len(t.Data))))
			pr.gradV = pr.grad
		}
		e.params = append(e.params, pr)
		e.byName[t.Name] = pr
	}
	e.noise = make([]float64, batch*c.NKVHeads*seqLen)
	if opt.Teacher != nil {
		if opt.Teacher.Config != c {
			return nil, fmt.Errorf("graph: the distillation teacher's config %+v differs from the model's %+v", opt.Teacher.Config, c)
		}
		if e.teacher, err = NewExec(opt.Teacher, dc, batch, seqLen, Options[T]{KeepLogits: true, ForwardOnly: true}); err != nil {
			return nil, fmt.Errorf("graph: distillation teacher: %w", err)
		}
	}
	return e, nil
}

// Config returns the model configuration.
func (e *Exec[T]) Config() model.Config { return e.cfg }

// Params lists the parameters (float32 graphs only; see ParamsT).
func (e *Exec[T]) Params() []Param {
	ps := e.ParamsT()
	out := make([]Param, len(ps))
	for i, p := range ps {
		v, ok1 := any(p.Value).([]float32)
		g, ok2 := any(p.Grad).([]float32)
		if !ok1 || !ok2 {
			panic("graph: Params is only available on float32 graphs; use ParamsT")
		}
		out[i] = Param{Name: p.Name, Shape: p.Shape, Value: v, Grad: g}
	}
	return out
}

// ParamT is Param for any element type.
type ParamT[T model.Float] struct {
	Name        string
	Shape       []int
	Value, Grad []T
}

// ParamsT lists the parameters with slices aliasing the graph's tensors.
func (e *Exec[T]) ParamsT() []ParamT[T] {
	out := make([]ParamT[T], len(e.params))
	for i, p := range e.params {
		out[i] = ParamT[T]{Name: p.name, Shape: append([]int(nil), p.shape...), Value: p.value.Data().([]T)}
		if p.grad != nil {
			out[i].Grad = p.grad.Data().([]T)
		}
	}
	return out
}

// WeightsT returns a copy of the current parameter values.
func (e *Exec[T]) WeightsT() *model.Params[T] {
	w, err := model.NewParams[T](e.cfg)
	if err != nil {
		panic(err) // the config was validated by NewExec
	}
	src, dst := e.w.Tensors(), w.Tensors()
	for i := range src {
		copy(dst[i].Data, src[i].Data)
	}
	return w
}

// Weights returns a float32 copy of the current parameter values.
func (e *Exec[T]) Weights() *model.Weights { return model.Convert[float32](e.WeightsT()) }

// Step runs forward and backward on one micro-batch; gradients land in Params()[i].Grad.
func (e *Exec[T]) Step(b Batch, sc StepContext) (Losses, error) { return e.run(b, sc, true) }

// Forward runs only the forward pass (no gradients are touched).
func (e *Exec[T]) Forward(b Batch, sc StepContext) (Losses, error) { return e.run(b, sc, false) }

// Logits returns the logits [B·T, V] of the last run (Options.KeepLogits only, else nil). The
// slice is overwritten by the next run.
func (e *Exec[T]) Logits() []T {
	if e.lastRun == nil || e.lastRun.logitsV == nil {
		return nil
	}
	return e.lastRun.logitsV.Data().([]T)
}

func (e *Exec[T]) run(b Batch, sc StepContext, backward bool) (Losses, error) {
	if backward && e.opt.ForwardOnly {
		return Losses{}, errors.New("graph: Step on a graph built with Options.ForwardOnly; use Forward")
	}
	if b.BatchSize != e.B || b.SeqLen != e.T || len(b.Inputs) != e.B*e.T || len(b.Targets) != e.B*e.T {
		return Losses{}, fmt.Errorf("graph: batch is %d×%d with %d inputs and %d targets, but the graph was built for %d×%d",
			b.BatchSize, b.SeqLen, len(b.Inputs), len(b.Targets), e.B, e.T)
	}
	useDMC := sc.DMC && !(sc.ZeroOut < 1)
	var v *variant[T]
	var err error
	if useDMC {
		if e.dmcv == nil {
			if e.dmcv, err = e.build(true); err != nil {
				return Losses{}, err
			}
		}
		v = e.dmcv
	} else {
		if e.plain == nil {
			if e.plain, err = e.build(false); err != nil {
				return Losses{}, err
			}
		}
		v = e.plain
	}
	e.lastRun = v
	return v.run(e, b, sc, backward)
}

// ErrNotFinite is the error of a step whose loss is NaN or infinite.
var ErrNotFinite = errors.New("graph: the loss is not finite (NaN or Inf); lower the learning rate or check the data")

// StepFLOPs is the conventional cost of one training step (forward + backward) on batch×seqLen
// tokens: 6·(matmul parameters)·tokens + 12·layers·Hq·D·T·tokens for attention (scores and
// P·V, forward ×3; the causal half is not discounted). The embedding lookup is not a matmul:
// with untied embeddings its table is left out; a tied table counts once, as the classifier.
func StepFLOPs(c model.Config, batch, seqLen int) float64 {
	params := c.NumParams()
	if !c.TieEmbeddings {
		params -= int64(c.VocabSize * c.Dim)
	}
	tokens := float64(batch * seqLen)
	attn := 12 * float64(c.NLayers*c.NHeads*c.HeadDim()*seqLen)
	return 6*float64(params)*tokens + attn*tokens
}
