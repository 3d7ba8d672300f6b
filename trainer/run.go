package trainer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/trainer/step"
)

// Options configure one training run.
type Options struct {
	RunDir      string // created if missing; holds recipe.yaml, model.json, metrics.jsonl, checkpoints/
	Recipe      Recipe // resolved and validated by Run
	Model       Model
	Source      Source
	Eval        Source // held-out windows for eval_every; the same windows are used each time
	ModelConfig any    // written as JSON into the run dir and every checkpoint; must match on resume

	Resume bool // continue from RUN_DIR/checkpoints/latest
	// A corrupt latest checkpoint is set aside (renamed corrupt-step-N, kept for inspection)
	// and the run resumes from the newest one that verifies, with a warning naming both;
	// ResumeStrict makes it an error instead.
	ResumeStrict bool
	StopAfter    int // stop (with a checkpoint) once this many steps are done; 0 = run the recipe to its end

	// OnZeroOutEnd runs once, before the first step after stage 1 (dmc mode only; before step 0
	// when zero_out_steps is 0). It must zero the W_q/W_k rows that produce the decision channel.
	// The optimiser moments of every element it changes are reset, so stale momentum does not
	// undo the zeroing (found by comparing against a one-off copy of the weights).
	OnZeroOutEnd func(params []Param) error

	Decay    func(Param) bool // weight-decay mask; nil = DefaultDecay
	Progress io.Writer        // human progress lines; nil = discard
	FS       FS               // checkpoint filesystem; nil = OSFS
	// Comm is the data-parallel group (nil: one rank). Each rank runs Run with its own Model
	// and Source over the same run directory; rank 0 writes the checkpoints, the metrics and
	// the progress lines.
	Comm Comm

	// Train says what of each parameter is trained (one entry per Model.Params(); nil: all),
	// usually from the recipe's train field (retrofit.TrainSelection).
	Train []step.Trained

	// StepFLOPs is the cost of one optimiser step (graph.StepFLOPs times the micro-batches) and
	// PeakFLOPS the device's dense peak it is compared with; both set: metrics and the progress
	// line report the model FLOPs utilisation.
	StepFLOPs, PeakFLOPS float64
}

// Metrics is one line of RUN_DIR/metrics.jsonl.
type Metrics struct {
	Step       int      `json:"step"` // optimiser steps completed, counting this one
	Stage      string   `json:"stage"`
	Loss       float64  `json:"loss"`
	LMLoss     float64  `json:"lm_loss"`
	CRLoss     float64  `json:"cr_loss"`
	KDLoss     *float64 `json:"kd_loss,omitempty"` // KL to the original model (distill_weight > 0)
	TargetCR   *float64 `json:"target_cr"`         // null when no compression is trained
	AchievedCR *float64 `json:"achieved_cr"`       // 1/(1 − mean α); null when DMC is off or α = 1
	MeanAlpha  float64  `json:"mean_alpha"`
	LR         float64  `json:"lr"`
	GradNorm   float64  `json:"grad_norm"` // before clipping
	Tokens     int      `json:"tokens"`
	TokensPerS float64  `json:"tokens_per_s"`
	MFU        *float64 `json:"mfu,omitempty"` // model FLOPs utilisation (Options.StepFLOPs / PeakFLOPS)
	// DataWait is how long the step waited for its micro-batches (the reader runs ahead of the
	// step; a value near 0 means the data never starved the device).
	DataWait float64 `json:"data_wait_s"`
	Elapsed  float64 `json:"elapsed_s"` // over all sessions of the run

	// Held-out evaluation (hard decisions, no noise), on steps that are multiples of eval_every.
	EvalLoss       *float64 `json:"eval_loss,omitempty"`
	EvalLMLoss     *float64 `json:"eval_lm_loss,omitempty"`
	EvalAchievedCR *float64 `json:"eval_achieved_cr,omitempty"`
}

// Result summarises a Run.
type Result struct {
	Step        int  // optimiser steps completed
	Done        bool // the recipe ran to its last step
	Interrupted bool // the context was cancelled; a checkpoint was saved
	Checkpoint  string
	Last        Metrics
}

// Run trains opts.Model on opts.Source following opts.Recipe. It returns a nil error when the
// recipe (or StopAfter) is reached and when ctx is cancelled (then Result.Interrupted is set
// and a checkpoint of the last completed step has been saved).
func Run(ctx context.Context, opts Options) (Result, error) {
	if opts.Comm == nil {
		opts.Comm = soloComm{} // newRun does the same for direct callers
	}
	comm := opts.Comm
	// Rank 0 prepares the run directory first (a corrupt checkpoint set aside, stale metrics
	// cut); the other ranks then only read it.
	if comm.Rank() > 0 {
		if err := comm.AllReduceSum64(nil); err != nil {
			return Result{}, err
		}
	}
	t, err := newRun(opts)
	if err != nil {
		comm.Abort(err)
		return Result{}, err
	}
	defer t.close()
	if comm.Rank() == 0 && comm.Size() > 1 {
		if err := comm.AllReduceSum64(nil); err != nil {
			return Result{}, err
		}
	}
	res, err := t.loop(ctx)
	if err != nil {
		comm.Abort(err)
	}
	return res, err
}

type run struct {
	opts      Options
	r         Recipe
	recipeYML []byte
	modelJSON []byte
	params    []Param
	grads     [][]float32 // what the optimiser reads: accumulators, or the model's Grad slices
	accum     [][]float32 // nil when grad_accum == 1
	opt       *AdamW
	store     *CheckpointStore
	metrics   *os.File
	progress  io.Writer
	lag       crLagWatch
	batch     Batch
	// dev is the model when it runs the optimiser itself on its device (step.Optimizer).
	dev step.Optimizer

	step       int
	tokens     int64
	elapsed0   float64 // seconds spent in earlier sessions
	start      time.Time
	startStep  int
	lastSaved  string
	savedStep  int
	snapshot   [][]float32
	dataBefore json.RawMessage
	// pf reads ahead; pos is the source position after the last micro-batch a step consumed
	// (what checkpoints record), dataWait the time the current step waited for data.
	pf        *prefetcher
	pos       json.RawMessage
	dataWait  time.Duration
	evalStart json.RawMessage
	// comm is the data-parallel group; lead (rank 0) writes checkpoints, metrics and progress.
	comm Comm
	lead bool
}

func newRun(opts Options) (*run, error) {
	if opts.Model == nil || opts.Source == nil {
		panic("trainer: Run needs a Model and a Source")
	}
	r := opts.Recipe
	r.Resolve()
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if opts.RunDir == "" {
		return nil, errors.New("no run directory given: pass one to keep checkpoints and metrics")
	}
	if opts.FS == nil {
		opts.FS = OSFS{}
	}
	if opts.Comm == nil {
		opts.Comm = soloComm{}
	}
	size := opts.Comm.Size()
	if r.GradAccum%size != 0 {
		return nil, fmt.Errorf("grad_accum %d counts the micro-batches of a step over all %d ranks: it must be a multiple of %d (set grad_accum=%d, or use %d ranks)",
			r.GradAccum, size, size, (r.GradAccum+size-1)/size*size, gcd(r.GradAccum, size))
	}
	t := &run{opts: opts, r: r, progress: opts.Progress, savedStep: -1, comm: opts.Comm, lead: opts.Comm.Rank() == 0}
	if t.progress == nil || !t.lead {
		t.progress = io.Discard
	}
	var err error
	if t.recipeYML, err = r.YAML(); err != nil {
		return nil, err
	}
	if t.modelJSON, err = json.MarshalIndent(opts.ModelConfig, "", "  "); err != nil {
		return nil, fmt.Errorf("model config: %w", err)
	}
	t.params = opts.Model.Params()
	seen := map[string]bool{}
	for _, p := range t.params {
		if len(p.Grad) != len(p.Value) {
			return nil, fmt.Errorf("model parameter %q has %d values but %d gradients", p.Name, len(p.Value), len(p.Grad))
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("model has two parameters named %q; checkpoints need unique names", p.Name)
		}
		seen[p.Name] = true
	}
	t.opt = NewAdamW(t.params, r.Beta1, r.Beta2, r.Eps, r.WeightDecay, opts.Decay)
	if err := t.opt.Restrict(t.params, opts.Train); err != nil {
		return nil, err
	}
	t.grads = make([][]float32, len(t.params))
	t.dev, _ = opts.Model.(step.Optimizer)
	if t.dev != nil && size > 1 {
		if dp, ok := t.dev.(step.DataParallel); !ok || dp.GroupSize() != size {
			return nil, fmt.Errorf("%d ranks: the device model must sum its gradients over the same group (give it the group's communicator: step.DataParallel)", size)
		}
	}
	if t.dev != nil {
		// The device accumulates, clips and updates; the host keeps only what checkpoints hold.
	} else if r.GradAccum > 1 {
		t.accum = make([][]float32, len(t.params))
		for i, p := range t.params {
			t.accum[i] = make([]float32, len(p.Value))
		}
		copy(t.grads, t.accum)
	} else {
		for i, p := range t.params {
			t.grads[i] = p.Grad
		}
	}
	mb := r.MicroBatchSize()
	t.batch = Batch{Inputs: make([]int, mb*r.SeqLen), Targets: make([]int, mb*r.SeqLen), BatchSize: mb, SeqLen: r.SeqLen}
	t.store = &CheckpointStore{FS: opts.FS, Dir: filepath.Join(opts.RunDir, "checkpoints"), Keep: r.KeepCheckpoints}

	if err := os.MkdirAll(opts.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	if !t.lead {
		if opts.Resume {
			return t, t.resume()
		}
		return t, nil
	}
	if opts.Resume {
		if err := t.resume(); err != nil {
			return nil, err
		}
		if err := t.push(); err != nil {
			return nil, err
		}
	} else if names, _ := t.store.List(); len(names) > 0 {
		return nil, fmt.Errorf("run directory %s already has checkpoints (newest %s): resume it, or choose a new run directory", opts.RunDir, names[len(names)-1])
	} else if err := truncateMetrics(filepath.Join(opts.RunDir, "metrics.jsonl"), 0); err != nil {
		return nil, err // metrics of an earlier attempt that never checkpointed
	}
	if err := writeFileAtomic(filepath.Join(opts.RunDir, "recipe.yaml"), t.recipeYML); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(opts.RunDir, "model.json"), t.modelJSON); err != nil {
		return nil, err
	}
	t.metrics, err = os.OpenFile(filepath.Join(opts.RunDir, "metrics.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open metrics: %w", err)
	}
	return t, nil
}

func (t *run) close() {
	if t.pf != nil {
		t.pf.close()
		t.pf = nil
	}
	if t.metrics != nil {
		t.metrics.Close()
	}
}

func (t *run) resume() error {
	latest, _ := t.store.readLatest()
	c, err := t.store.OpenLatest(!t.opts.ResumeStrict, t.progress)
	if err != nil {
		return err
	}
	if latest != "" && c.Name != latest && t.lead {
		// Fell back past a corrupt checkpoint: set it aside and point "latest" at the one
		// resumed from, so nothing names the corrupt one and the next save of its step is clean.
		aside, err := t.store.SetAside(latest)
		if err != nil {
			return fmt.Errorf("set the corrupt checkpoint %s aside: %w", latest, err)
		}
		if err := t.store.writeLatest(c.Name); err != nil {
			return err
		}
		fmt.Fprintf(t.progress, "warning: moved the corrupt checkpoint %s to %s; latest now names %s\n", latest, aside, c.Name)
	}
	if !bytes.Equal(bytes.TrimSpace(c.ModelConfig), bytes.TrimSpace(t.modelJSON)) {
		return fmt.Errorf("checkpoint %s was written for another model config:\n%s\nthis run has:\n%s\nresume with the same model, or start a new run directory", c.Name, c.ModelConfig, t.modelJSON)
	}
	if diff := recipeDiff(c.Recipe, t.recipeYML); diff != "" {
		fmt.Fprintf(t.progress, "note: the recipe differs from checkpoint %s (%s); the run continues with the new values\n", c.Name, diff)
	}
	if err := t.store.Restore(c, t.params, t.opt); err != nil {
		return err
	}
	if err := t.opts.Source.Seek(c.State.DataPosition); err != nil {
		return fmt.Errorf("checkpoint %s: restore the data position: %w", c.Name, err)
	}
	t.step, t.tokens, t.elapsed0 = c.State.Step, c.State.TokensSeen, c.State.ElapsedSeconds
	t.lastSaved, t.savedStep = c.Name, c.State.Step
	if !t.lead {
		return nil
	}
	if err := truncateMetrics(filepath.Join(t.opts.RunDir, "metrics.jsonl"), t.step); err != nil {
		return err
	}
	fmt.Fprintf(t.progress, "resumed from %s (step %d)\n", c.Name, t.step)
	return nil
}

func (t *run) loop(ctx context.Context) (Result, error) {
	r := &t.r
	end := r.TotalSteps()
	if t.opts.StopAfter > 0 && t.opts.StopAfter < end {
		end = t.opts.StopAfter
	}
	t.start, t.startStep = time.Now(), t.step
	t.pos = append(json.RawMessage(nil), t.opts.Source.Position()...) // before the reader takes the source over
	var last Metrics
	size, rank := t.comm.Size(), t.comm.Rank()
	per := r.GradAccum / size // this rank's micro-batches of each step
	for t.step < end {
		// One rank stops alone; a group stops where it agreed to (below), all at the same step.
		if size == 1 && ctx.Err() != nil {
			return t.interrupted(last, t.pos)
		}
		if r.Mode == ModeDMC && t.step == r.ZeroOutSteps && t.opts.OnZeroOutEnd != nil {
			if err := t.applyZeroOutHook(); err != nil {
				return t.result(last), err
			}
		}
		t.dataBefore = append(t.dataBefore[:0], t.pos...)
		t.dataWait = 0
		stepStart := time.Now()
		plan := r.PlanAt(t.step)
		var lossSum, lmSum, crSum, alphaSum, kdSum float64
		tokens := 0
		// Every rank reads all micro-batches of the step in order and trains on its share
		// (micro-batches rank·per … rank·per+per−1), so the data position and the noise of a
		// micro-batch are the same on any group size.
		for g := 0; g < r.GradAccum; g++ {
			if g > 0 && size == 1 && ctx.Err() != nil {
				return t.interrupted(last, t.dataBefore) // drop the partial step; save the data position of its start
			}
			if err := t.fillBatch(); err != nil {
				return t.result(last), err
			}
			if g/per != rank {
				continue
			}
			mb := g - rank*per
			sc := plan.Context
			sc.MicroBatch, sc.LocalMicroBatch = g, mb
			sc.Seed = StepSeed(r.Seed, t.step, 0, g)
			l, err := t.opts.Model.Step(t.batch, sc)
			if err != nil {
				return t.result(last), fmt.Errorf("step %d, micro-batch %d: %w", t.step+1, g, err)
			}
			lossSum += l.Loss
			lmSum += l.LM
			crSum += l.CR
			kdSum += l.KD
			alphaSum += l.MeanAlpha
			tokens += l.Tokens
			if t.accum != nil {
				t.accumulate(mb)
			}
		}
		stop := false
		if size > 1 {
			// Sum the micro-batches' losses and gradients over the ranks, and agree on
			// stopping: a rank whose context is cancelled stops the group after this step.
			red := []float64{lossSum, lmSum, crSum, kdSum, alphaSum, float64(tokens), 0}
			if ctx.Err() != nil {
				red[6] = 1
			}
			if err := t.comm.AllReduceSum64(red); err != nil {
				return t.result(last), fmt.Errorf("step %d: %w", t.step+1, err)
			}
			lossSum, lmSum, crSum, kdSum, alphaSum, tokens, stop = red[0], red[1], red[2], red[3], red[4], int(red[5]), red[6] > 0
			if t.dev == nil { // a device model sums its own in Update
				if err := t.comm.AllReduceSum(t.grads); err != nil {
					return t.result(last), fmt.Errorf("step %d: gradients: %w", t.step+1, err)
				}
			}
		}
		n := float64(r.GradAccum)
		m := Metrics{Step: t.step + 1, Stage: r.StageLabel(plan), Loss: lossSum / n, LMLoss: lmSum / n,
			CRLoss: crSum / n, MeanAlpha: alphaSum / n, LR: plan.LR, Tokens: tokens}
		if plan.Context.DistillWeight > 0 {
			kd := kdSum / n
			m.KDLoss = &kd
		}
		if !finite(m.Loss) || !finite(m.LMLoss) || !finite(m.CRLoss) || !finite(m.MeanAlpha) {
			return t.result(last), t.diverged(fmt.Sprintf("loss is %v (lm %v, cr %v, mean α %v)", m.Loss, m.LMLoss, m.CRLoss, m.MeanAlpha))
		}
		if t.dev != nil {
			norm, err := t.deviceUpdate(r.GradAccum, plan.LR)
			if err != nil {
				return t.result(last), err
			}
			m.GradNorm = norm
		} else {
			if t.accum != nil || size > 1 {
				scaleAll(t.grads, float32(1/n)) // mean over micro-batches: the gradient of the batch mean
			}
			t.opt.MaskUntrained(t.grads)
			m.GradNorm = ClipGlobalNorm(t.grads, r.GradClip)
			if !finite(m.GradNorm) {
				return t.result(last), t.diverged(fmt.Sprintf("the gradient norm is %v", m.GradNorm))
			}
			t.opt.Update(t.params, t.grads, plan.LR)
		}
		t.step++
		t.tokens += int64(tokens)

		if plan.Context.DMC {
			tc := plan.TargetCR
			m.TargetCR = &tc
			if m.MeanAlpha < 1 {
				ac := 1 / (1 - m.MeanAlpha)
				m.AchievedCR = &ac
			}
		}
		m.DataWait = t.dataWait.Seconds()
		if d := time.Since(stepStart).Seconds(); d > 0 {
			m.TokensPerS = float64(tokens) / d
			if t.opts.StepFLOPs > 0 && t.opts.PeakFLOPS > 0 {
				mfu := t.opts.StepFLOPs / d / t.opts.PeakFLOPS
				m.MFU = &mfu
			}
		}
		if t.lead && r.EvalEvery > 0 && t.opts.Eval != nil && (t.step%r.EvalEvery == 0 || t.step == end) {
			if err := t.evaluate(&m); err != nil {
				return t.result(last), err
			}
		}
		m.Elapsed = t.elapsed()
		last = m
		if err := t.writeMetrics(m); err != nil {
			return t.result(last), err
		}
		if t.step%r.LogEvery == 0 || t.step == end || t.step == t.startStep+1 {
			t.printProgress(m, end)
		}
		if w := t.lag.observe(r, m); w != "" {
			fmt.Fprintln(t.progress, w)
		}
		if (r.CheckpointEvery > 0 && t.step%r.CheckpointEvery == 0) || t.step == end {
			if err := t.save(t.pos); err != nil {
				return t.result(last), err
			}
		}
		if stop && t.step < end {
			return t.interrupted(last, t.pos)
		}
	}
	res := t.result(last)
	res.Done = t.step >= r.TotalSteps()
	return res, nil
}

func (t *run) result(last Metrics) Result {
	return Result{Step: t.step, Checkpoint: t.lastSaved, Last: last}
}

func (t *run) interrupted(last Metrics, pos json.RawMessage) (Result, error) {
	if err := t.save(pos); err != nil {
		return t.result(last), fmt.Errorf("interrupted at step %d, and saving a checkpoint failed: %w", t.step, err)
	}
	fmt.Fprintf(t.progress, "interrupted at step %d; saved %s; continue with resume\n", t.step, t.lastSaved)
	res := t.result(last)
	res.Interrupted = true
	return res, nil
}

func (t *run) diverged(what string) error {
	if t.lastSaved == "" {
		return fmt.Errorf("step %d: %s; training diverged and the weights were not updated. No checkpoint was saved yet: lower lr (now %g) or grad_clip (now %g) and start the run again",
			t.step+1, what, t.r.LR, t.r.GradClip)
	}
	return fmt.Errorf("step %d: %s; training diverged and the weights were not updated. The last good checkpoint is %s: lower lr (now %g) or grad_clip (now %g) and resume from it",
		t.step+1, what, t.lastSaved, t.r.LR, t.r.GradClip)
}

func (t *run) save(dataPos json.RawMessage) error {
	if t.savedStep == t.step {
		return nil // this exact state is already on disk
	}
	if !t.lead {
		t.savedStep = t.step // rank 0 writes the group's checkpoint
		return nil
	}
	if t.dev != nil {
		if err := t.dev.Pull(t.opt.M, t.opt.V); err != nil {
			return fmt.Errorf("copy the weights from the device for a checkpoint: %w", err)
		}
	}
	stage, _ := t.r.StageAt(t.step)
	st := TrainState{
		Step: t.step, Stage: stage.String(), AdamStep: t.opt.T, DataPosition: dataPos,
		RNG:        RNGState{Kind: "splitmix64(seed, step, rank, micro-batch)", Seed: t.r.Seed, Rank: 0, Counter: t.step},
		TokensSeen: t.tokens, ElapsedSeconds: t.elapsed(),
	}
	name, err := t.store.Save(SaveInput{State: st, Params: t.params, Opt: t.opt, Recipe: t.recipeYML, ModelConfig: t.modelJSON})
	if err != nil {
		return fmt.Errorf("%w; free space (or fix the error) and resume the run", err)
	}
	t.lastSaved, t.savedStep = name, t.step
	return nil
}

func (t *run) elapsed() float64 { return t.elapsed0 + time.Since(t.start).Seconds() }

func (t *run) fillBatch() error {
	if t.pf == nil {
		t.pf = startPrefetch(t.opts.Source, t.batch.BatchSize, t.r.SeqLen)
	}
	mb, wait := t.pf.next()
	t.dataWait += wait
	if mb.err != nil {
		t.pf.close()
		t.pf = nil
		if errors.Is(mb.err, io.EOF) {
			return fmt.Errorf("the data ran out at step %d after %d tokens; the recipe needs %d tokens (%d steps × %d): give more data, allow epochs in the data source, or reduce the steps",
				t.step+1, t.tokens, int64(t.r.TotalSteps())*int64(t.r.TokensPerStep()), t.r.TotalSteps(), t.r.TokensPerStep())
		}
		return fmt.Errorf("step %d: read data: %w", t.step+1, mb.err)
	}
	copy(t.batch.Inputs, mb.inputs)
	copy(t.batch.Targets, mb.targets)
	t.pos = mb.pos
	return nil
}

// push uploads the host's weights and moments to a device model (after a resume or a hook).
func (t *run) push() error {
	if t.dev == nil {
		return nil
	}
	if err := t.dev.Push(t.opt.M, t.opt.V); err != nil {
		return fmt.Errorf("copy the weights to the device: %w", err)
	}
	return nil
}

// deviceUpdate ends a step on a device model: the mean over micro-batches, clipping and AdamW
// run there; t.opt counts the update so that checkpoints record it.
func (t *run) deviceUpdate(micro int, lr float64) (float64, error) {
	r := &t.r
	norm, err := t.dev.Update(step.AdamW{Beta1: r.Beta1, Beta2: r.Beta2, Eps: r.Eps, WeightDecay: r.WeightDecay,
		Decay: t.opt.Decay, T: t.opt.T + 1, Train: t.opt.Train}, micro, r.GradClip, lr)
	if err != nil {
		return norm, fmt.Errorf("step %d: optimiser update on the device: %w", t.step+1, err)
	}
	if !finite(norm) {
		// The device skips the update of a non-finite gradient, as the host path does.
		return norm, t.diverged(fmt.Sprintf("the gradient norm is %v", norm))
	}
	t.opt.T++
	return norm, nil
}

// accumulate adds the model's fresh gradients into the accumulators (a copy for the first
// micro-batch, so no zeroing pass is needed).
func (t *run) accumulate(mb int) {
	for i, p := range t.params {
		a := t.accum[i]
		if mb == 0 {
			copy(a, p.Grad)
			continue
		}
		for j, g := range p.Grad {
			a[j] += g
		}
	}
}

// evaluate runs the held-out evaluation with the schedule of the step just taken, hard
// decisions and no noise, always on the same windows.
func (t *run) evaluate(m *Metrics) error {
	if t.evalStart == nil {
		t.evalStart = append(json.RawMessage(nil), t.opts.Eval.Position()...)
	} else if err := t.opts.Eval.Seek(t.evalStart); err != nil {
		return fmt.Errorf("rewind the evaluation data: %w", err)
	}
	sc := t.r.PlanAt(t.step - 1).Context
	sc.Hard, sc.Seed = true, 0
	res, err := Evaluate(t.opts.Model, t.opts.Eval, t.r.MicroBatchSize(), t.r.SeqLen, t.r.EvalBatches, sc)
	if err != nil {
		return fmt.Errorf("step %d: %w", t.step, err)
	}
	m.EvalLoss, m.EvalLMLoss = &res.Loss, &res.LM
	if sc.DMC && res.MeanAlpha < 1 {
		cr := res.AchievedCR()
		m.EvalAchievedCR = &cr
	}
	fmt.Fprintf(t.progress, "eval at step %d: loss %.4f lm %.4f", t.step, res.Loss, res.LM)
	if m.EvalAchievedCR != nil {
		fmt.Fprintf(t.progress, " cr %.2f", *m.EvalAchievedCR)
	}
	fmt.Fprintf(t.progress, " (%d tokens)\n", res.Tokens)
	return nil
}

func (t *run) applyZeroOutHook() error {
	if t.dev != nil {
		if err := t.dev.Pull(t.opt.M, t.opt.V); err != nil {
			return fmt.Errorf("end of the zero-out stage (step %d): copy the weights from the device: %w", t.step, err)
		}
	}
	if t.snapshot == nil {
		t.snapshot = make([][]float32, len(t.params))
		for i, p := range t.params {
			t.snapshot[i] = append([]float32(nil), p.Value...)
		}
	}
	if err := t.opts.OnZeroOutEnd(t.params); err != nil {
		return fmt.Errorf("end of the zero-out stage (step %d): %w", t.step, err)
	}
	changed := 0
	for i, p := range t.params {
		for j, v := range p.Value {
			if math.Float32bits(v) != math.Float32bits(t.snapshot[i][j]) {
				t.opt.ResetMoments(i, j)
				changed++
			}
		}
	}
	t.snapshot = nil
	if err := t.push(); err != nil {
		return fmt.Errorf("end of the zero-out stage (step %d): %w", t.step, err)
	}
	fmt.Fprintf(t.progress, "zero-out stage done at step %d: the hook changed %d weights (their optimiser moments were reset)\n", t.step, changed)
	return nil
}

func (t *run) writeMetrics(m Metrics) error {
	if !t.lead {
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	b = append(b, '\n')
	if _, err := t.metrics.Write(b); err != nil {
		return fmt.Errorf("write metrics: %w", err)
	}
	return nil
}

func (t *run) printProgress(m Metrics, end int) {
	var b strings.Builder
	fmt.Fprintf(&b, "step %d/%d %s loss %.4f lm %.4f", m.Step, end, m.Stage, m.Loss, m.LMLoss)
	if m.KDLoss != nil {
		fmt.Fprintf(&b, " kd %.4f", *m.KDLoss)
	}
	if m.TargetCR != nil {
		if m.AchievedCR != nil {
			fmt.Fprintf(&b, " cr %.2f→%.2f", *m.AchievedCR, *m.TargetCR)
		} else {
			fmt.Fprintf(&b, " cr inf→%.2f", *m.TargetCR)
		}
	}
	fmt.Fprintf(&b, " lr %.2e |g| %.3g %.0f tok/s", m.LR, m.GradNorm, m.TokensPerS)
	if m.MFU != nil {
		fmt.Fprintf(&b, " MFU %.1f%%", 100**m.MFU)
	}
	if done := t.step - t.startStep; done > 0 && t.step < end {
		per := time.Since(t.start) / time.Duration(done)
		fmt.Fprintf(&b, " ETA %s", (per * time.Duration(end-t.step)).Round(time.Second))
	}
	b.WriteByte('\n')
	io.WriteString(t.progress, b.String())
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// truncateMetrics drops metric lines of steps after step (written after the checkpoint a run
// resumes from), so that metrics.jsonl has each step once.
func truncateMetrics(p string, step int) error {
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read metrics: %w", err)
	}
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	dropped := false
	for sc.Scan() {
		var m struct {
			Step int `json:"step"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil || m.Step > step {
			dropped = true
			continue
		}
		out.Write(sc.Bytes())
		out.WriteByte('\n')
	}
	if !dropped {
		return nil
	}
	return writeFileAtomic(p, out.Bytes())
}

// writeFileAtomic writes p atomically and durably (internal/atomicfile).
func writeFileAtomic(p string, b []byte) error { return atomicfile.Write(p, b) }

// recipeDiff lists the top-level keys whose values differ between two recipe YAMLs.
func recipeDiff(a, b []byte) string {
	var ma, mb map[string]any
	if yamlUnmarshal(a, &ma) != nil || yamlUnmarshal(b, &mb) != nil {
		return "unreadable recipe"
	}
	var diffs []string
	for _, k := range sortedKeys(recipeKeys()) {
		if fmt.Sprint(ma[k]) != fmt.Sprint(mb[k]) {
			diffs = append(diffs, fmt.Sprintf("%s: %v → %v", k, ma[k], mb[k]))
		}
	}
	return strings.Join(diffs, ", ")
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
