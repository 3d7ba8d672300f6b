package trainer

import "encoding/json"

// Param is one trainable tensor of a Model. Value and Grad share the model's storage; the
// model overwrites Grad on every Step and the trainer updates Value in place.
type Param struct {
	Name  string
	Shape []int
	Value []float32
	Grad  []float32
}

// Batch is one micro-batch of token ids, row-major [BatchSize, SeqLen]; Targets are the
// Inputs shifted left by one token.
type Batch struct {
	Inputs, Targets   []int
	BatchSize, SeqLen int
}

// StepContext tells the model what the schedule wants for this step.
type StepContext struct {
	Step, MicroBatch int     // optimiser step (0-based) and micro-batch index within it
	Seed             uint64  // seeds the Gumbel noise; a pure function of (seed, step, rank, micro-batch)
	DMC              bool    // relaxed DMC attention on (stages 2-3 of a dmc run)
	TargetAlpha      float64 // α*(s) = 1 − 1/CR(s) for the CR loss
	ZeroOut          float64 // stage-1 multiplier of the decision channel q/k[D-1]; 1 = none (vanilla, and stages 2-3, where DMC removes the channel itself)
	Hard             bool    // hard decisions, no noise (evaluation)
	CRWeight         float64 // λ of L = L_LM + λ·L_CR (0 when the CR loss is off)
	DistillWeight    float64 // β of L_LM = (1−β)·CE + β·KL(original ‖ model); 0 = plain CE
}

// Losses are what one forward (and backward) pass reports. Loss = (1−β)·LM + β·KD +
// CRWeight·CR, β the distillation weight. LM (cross-entropy) is the
// token mean over the micro-batch; MeanAlpha is the mean hard decision (0 when DMC is off).
type Losses struct {
	Loss, LM, CR, MeanAlpha float64
	KD                      float64 // KL to the original model (distillation); 0 when off
	Tokens                  int
}

// Model is the contract of a trainable model (the Gorgonia graph implements it).
// Step runs forward and backward on one micro-batch and overwrites every Param's Grad with the
// gradient of that micro-batch's Loss; Forward only evaluates.
type Model interface {
	Params() []Param
	Step(b Batch, sc StepContext) (Losses, error)
	Forward(b Batch, sc StepContext) (Losses, error)
}

// Source yields training windows of SeqLen+1 tokens and can save and restore its position
// (package data's packer implements it). Position must describe the state *after* the last
// window returned by Next.
type Source interface {
	Next() (window []int, err error)
	Position() json.RawMessage
	Seek(json.RawMessage) error
}
