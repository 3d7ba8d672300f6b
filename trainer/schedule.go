package trainer

import (
	"math"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/internal/splitmix"
)

// Stage is one of the three phases of a DMC retrofit (dmc-spec.md §3).
type Stage int

const (
	StageZeroOut  Stage = 1 // learn to live without the decision channel
	StageRetrofit Stage = 2 // CR target ramps up
	StageFineTune Stage = 3 // fixed CR, LR decays
)

func (s Stage) String() string {
	switch s {
	case StageZeroOut:
		return "zero-out"
	case StageRetrofit:
		return "retrofit"
	case StageFineTune:
		return "fine-tune"
	}
	return "unknown"
}

// Plan is what the schedule prescribes for optimiser step s (0-based).
type Plan struct {
	Step     int
	Stage    Stage
	LR       float64
	TargetCR float64 // 1 when no compression is asked for (stage 1, control runs)
	Context  StepContext
}

// TotalSteps is the number of optimiser steps of the whole run (all three stages).
func (r *Recipe) TotalSteps() int { return r.ZeroOutSteps + r.Retrofit() + r.FineTuneSteps }

// StageAt returns the stage of step s and the step's index within that stage.
func (r *Recipe) StageAt(s int) (Stage, int) {
	switch {
	case s < r.ZeroOutSteps:
		return StageZeroOut, s
	case s < r.ZeroOutSteps+r.Retrofit():
		return StageRetrofit, s - r.ZeroOutSteps
	default:
		return StageFineTune, s - r.ZeroOutSteps - r.Retrofit()
	}
}

// ZeroOutAt is the stage-1 multiplier max(0, 1 − s/(f·S1)) for step s of stage 1.
func (r *Recipe) ZeroOutAt(s int) float64 {
	return dmc.ZeroOutFactorAt(s, r.ZeroOutSteps, r.ZeroOutDecayFrac)
}

// CRAt is the target CR at step s2 of stage 2: 1 + (CR_t − 1)·min(1, s2/S_ramp).
func (r *Recipe) CRAt(s2 int) float64 { return dmc.TargetCR(s2, r.Ramp(), r.TargetCR) }

// NoiseDampingAt is fine_tune_decisions: anneal's damping at step i of stage 3: linear from 0
// at its first step to 1 (no noise) at its last.
func (r *Recipe) NoiseDampingAt(i int) float64 {
	if r.FineTuneSteps <= 1 {
		return 1
	}
	return math.Min(1, float64(i)/float64(r.FineTuneSteps-1))
}

// LRAt is the learning rate of step s: linear warmup over warmup_steps (the first step gets
// lr/warmup), then per lr_schedule: "constant"; "cosine" from the end of warmup to the last
// step; "stages" constant through stages 1-2 and cosine over stage 3. Cosine decays reach
// lr·lr_final_frac exactly at the last step.
func (r *Recipe) LRAt(s int) float64 {
	lr := r.LR
	if s < r.WarmupSteps {
		lr *= float64(s+1) / float64(r.WarmupSteps)
	}
	switch r.LRSchedule {
	case LRCosine:
		if s >= r.WarmupSteps {
			lr *= cosineFactor(s-r.WarmupSteps, r.TotalSteps()-r.WarmupSteps, r.LRFinalFrac)
		}
	case LRStages:
		if stage, i := r.StageAt(s); stage == StageFineTune {
			lr *= cosineFactor(i, r.FineTuneSteps, r.LRFinalFrac)
		}
	}
	return lr
}

// cosineFactor goes from 1 at i=0 to final at i=n−1.
func cosineFactor(i, n int, final float64) float64 {
	if n <= 1 {
		return 1
	}
	p := math.Min(1, float64(i)/float64(n-1))
	return final + (1-final)*0.5*(1+math.Cos(math.Pi*p))
}

// PlanAt returns the full schedule for optimiser step s. The returned Context has Step set and
// MicroBatch/Seed left for the loop to fill in.
func (r *Recipe) PlanAt(s int) Plan {
	stage, i := r.StageAt(s)
	p := Plan{Step: s, Stage: stage, LR: r.LRAt(s), TargetCR: 1}
	p.Context = StepContext{Step: s, ZeroOut: 1, DistillWeight: r.DistillWeight}
	if r.Mode == ModeControl {
		return p
	}
	switch stage {
	case StageZeroOut:
		p.Context.ZeroOut = r.ZeroOutAt(i)
	case StageRetrofit:
		p.TargetCR = r.CRAt(i)
	case StageFineTune:
		p.TargetCR = r.TargetCR
		p.Context.StraightThrough = r.FineTuneDecisions == DecisionsHard
		if r.FineTuneDecisions == DecisionsAnneal {
			p.Context.NoiseDamping = r.NoiseDampingAt(i)
		}
	}
	if stage != StageZeroOut {
		p.Context.DMC = true // the DMC graph removes the decision channel itself; ZeroOut stays 1
		p.Context.TargetAlpha = dmc.TargetAlpha(p.TargetCR)
		p.Context.CRWeight = r.CRLossWeight
	}
	return p
}

// StepSeed derives the noise seed of (step, rank, micro-batch) from the recipe seed with
// splitmix64, so that noise depends on nothing but these numbers (resume is exact). The
// trainer passes rank 0 and the micro-batch's index among all ranks' micro-batches of the
// step, so a data-parallel group draws exactly the noise of one rank accumulating them all;
// the rank argument stays for streams that must differ per rank.
func StepSeed(seed uint64, step, rank, micro int) uint64 {
	x := splitmix64(seed ^ 0x6a09e667f3bcc909)
	x = splitmix64(x ^ uint64(step))
	x = splitmix64(x ^ uint64(rank)<<32)
	return splitmix64(x ^ uint64(micro))
}

func splitmix64(x uint64) uint64 { return splitmix.Mix(x + splitmix.Golden) }

// StageLabel is the stage name of plan in metrics.jsonl and the progress line: the stage, with
// "-hard" or "-anneal" in a fine-tune stage of those fine_tune_decisions, and "control" for
// every step of a control run (no DMC stages).
func (r *Recipe) StageLabel(plan Plan) string {
	if r.Mode == ModeControl {
		return ModeControl
	}
	stage := plan.Stage.String()
	switch {
	case plan.Context.StraightThrough:
		stage += "-hard"
	case r.FineTuneDecisions == DecisionsAnneal && plan.Stage == StageFineTune:
		stage += "-anneal"
	}
	return stage
}
