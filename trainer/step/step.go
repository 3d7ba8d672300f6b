// Package step is the contract between the training loop (package trainer) and a trainable
// model (the training graph, package graph, on any executor): the parameters, one micro-batch,
// what the schedule asks of one step, and the losses it reports. It is a leaf: both sides
// import it, neither imports the other.
package step

// Param is one trainable tensor under its Hugging Face name. Value and Grad share the model's
// storage: the model overwrites Grad on every Step and the trainer updates Value in place.
type Param struct {
	Name  string
	Shape []int
	Value []float32
	Grad  []float32
}

// Batch is one micro-batch of token ids, row-major [BatchSize, SeqLen]; Targets are the
// Inputs shifted left by one token. A negative target is ignored by the loss.
type Batch struct {
	Inputs, Targets   []int
	BatchSize, SeqLen int
}

// Context tells the model what the schedule wants for this step.
type Context struct {
	Step, MicroBatch int // optimiser step (0-based) and micro-batch index within it, over all ranks
	// LocalMicroBatch is the index among this rank's micro-batches of the step: a model that
	// accumulates gradients itself adds to the earlier ones when it is > 0. Equal to
	// MicroBatch on one rank.
	LocalMicroBatch int
	Seed            uint64  // keys the Gumbel noise; a pure function of (seed, step, micro-batch)
	DMC             bool    // relaxed DMC attention on (stages 2-3 of a dmc run); false: plain Llama
	TargetAlpha     float64 // α*(s) = 1 − 1/CR(s) for the CR loss
	// ZeroOut is the stage-1 multiplier of the decision channel q/k[ch]; 1 = none (vanilla,
	// and stages 2-3, where DMC removes the channel itself). Below 1 the plain graph runs (no
	// merging) with the channel scaled, whatever DMC says.
	ZeroOut float64
	Hard    bool // hard decisions 1[a > 0], no noise (evaluation)
	// StraightThrough trains on the hard decisions inference makes (1[a > 0], no noise) with
	// the gradient of σ(a), the merge probability under the training noise (the recipe's
	// fine_tune_decisions: hard).
	StraightThrough bool
	// NoiseDamping scales the Gumbel noise of the soft decisions by 1 − NoiseDamping: 0 (the
	// zero value) is the full noise, 1 none (the recipe's fine_tune_decisions: anneal ramps it
	// from 0 to 1 over stage 3, so that training ends on nearly the decisions inference makes
	// while every gradient stays that of a soft decision).
	NoiseDamping float64
	CRWeight     float64 // λ of L = L_LM + λ·L_CR (0 when the CR loss is off)
	// DistillWeight β mixes the LM loss: (1−β)·cross-entropy + β·KL(teacher ‖ model), the
	// teacher being the original model, run plain. 0 = plain cross-entropy.
	DistillWeight float64
}

// Losses are what one forward (and backward) pass reports. Loss = (1−β)·LM + β·KD +
// CRWeight·CR, β the distillation weight. LM (cross-entropy) is the token mean over the
// micro-batch; MeanAlpha is the mean hard decision (0 when DMC is off).
type Losses struct {
	Loss, LM, CR, MeanAlpha float64
	KD                      float64 // KL to the original model (distillation); 0 when off
	Tokens                  int
}

// Model is a trainable model. Step runs forward and backward on one micro-batch and overwrites
// every Param's Grad with the gradient of that micro-batch's Loss; Forward only evaluates.
type Model interface {
	Params() []Param
	Step(b Batch, sc Context) (Losses, error)
	Forward(b Batch, sc Context) (Losses, error)
}

// Optimizer is implemented by a Model that keeps its parameters, gradients and optimiser state
// on an accelerator (the CUDA executor). The trainer then leaves gradient accumulation,
// clipping and the AdamW update to it, and moves state to and from the host only for
// checkpoints, resumes and host-side weight changes.
type Optimizer interface {
	Model
	// Update ends an optimiser step: it divides the gradient accumulated over the step's micro
	// (≥ 1) micro-batches by micro, clips it to the global norm maxNorm (≤ 0: no clipping),
	// applies one AdamW update with learning rate lr, and returns the norm before clipping. A
	// Step with Context.MicroBatch > 0 adds to the gradient of the earlier micro-batches.
	Update(h AdamW, micro int, maxNorm, lr float64) (gradNorm float64, err error)
	// Pull copies the device's parameter values into Params()' Value slices and its moments
	// into m and v (shaped like the parameters).
	Pull(m, v [][]float32) error
	// Push uploads Params()' Value slices and the moments m, v to the device.
	Push(m, v [][]float32) error
}

// DataParallel is an Optimizer that is one rank of a data-parallel group and sums the
// gradients over it in Update (micro then counts the micro-batches of all ranks).
type DataParallel interface {
	Optimizer
	GroupSize() int
}

// AdamW is the optimiser's configuration for one update: trainer.AdamW's fields, with T the
// number of the update (≥ 1, for the bias correction).
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	Decay                          []bool // per parameter, in Params() order
	T                              int
	// Train says what of each parameter is updated (nil: everything); the gradient norm and
	// the clipping cover only what is trained.
	Train []Trained
}

// Trained says what of one parameter the optimiser updates and keeps moments for: every
// element (All), the listed rows of its [out, in] matrix (Rows, ascending), or nothing (a
// frozen parameter: neither).
type Trained struct {
	All  bool
	Rows []int
}

// Frozen reports whether nothing of the parameter is trained.
func (t Trained) Frozen() bool { return !t.All && len(t.Rows) == 0 }

// Elements is the number of trained elements of a parameter of n elements in rows of cols.
func (t Trained) Elements(n, cols int) int {
	if t.All {
		return n
	}
	return len(t.Rows) * cols
}
