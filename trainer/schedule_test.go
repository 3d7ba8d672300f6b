package trainer

import (
	"math"
	"testing"
)

func scheduleRecipe() Recipe {
	return Recipe{Mode: ModeDMC, TargetCR: 3, ZeroOutSteps: 10, ZeroOutDecayFrac: 0.8, RampSteps: 20,
		RetrofitSteps: 25, FineTuneSteps: 11, LR: 1, LRSchedule: LRStages, LRFinalFrac: 0.1, CRLossWeight: 1}
}

func TestLRSchedule(t *testing.T) {
	tests := []struct {
		name     string
		schedule string
		warmup   int
		step     int
		want     float64
	}{
		{"stages: warmup first step", LRStages, 4, 0, 0.25},
		{"stages: warmup last step", LRStages, 4, 3, 1},
		{"stages: constant in stage 1", LRStages, 0, 9, 1},
		{"stages: constant in stage 2", LRStages, 0, 34, 1},
		{"stages: stage 3 starts at full lr", LRStages, 0, 35, 1},
		{"stages: stage 3 midpoint", LRStages, 0, 40, 0.55},
		{"stages: stage 3 last step is final", LRStages, 0, 45, 0.1},
		{"constant", LRConstant, 2, 45, 1},
		{"constant: warmup", LRConstant, 2, 0, 0.5},
		{"cosine: start after warmup", LRCosine, 1, 1, 1},
		{"cosine: end", LRCosine, 1, 45, 0.1},
		{"cosine: middle", LRCosine, 1, 23, 0.55},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := scheduleRecipe()
			r.LRSchedule, r.WarmupSteps = tc.schedule, tc.warmup
			if got := r.LRAt(tc.step); math.Abs(got-tc.want) > 1e-12 {
				t.Fatalf("LRAt(%d) = %v, want %v", tc.step, got, tc.want)
			}
		})
	}
}

func TestPlanStages(t *testing.T) {
	tests := []struct {
		step        int
		stage       Stage
		dmc         bool
		zeroOut     float64
		targetCR    float64
		targetAlpha float64
		crWeight    float64
	}{
		{0, StageZeroOut, false, 1, 1, 0, 0},
		{4, StageZeroOut, false, 0.5, 1, 0, 0}, // 1 − 4/(0.8·10)
		{8, StageZeroOut, false, 0, 1, 0, 0},
		{9, StageZeroOut, false, 0, 1, 0, 0}, // clamped at 0
		// From stage 2 on the DMC graph drops the channel itself: ZeroOut is back to 1 ("none").
		{10, StageRetrofit, true, 1, 1, 0, 1},
		{20, StageRetrofit, true, 1, 2, 0.5, 1},     // half the ramp: CR 1 + 2·0.5
		{30, StageRetrofit, true, 1, 3, 2.0 / 3, 1}, // ramp done
		{34, StageRetrofit, true, 1, 3, 2.0 / 3, 1}, // held until stage 2 ends
		{35, StageFineTune, true, 1, 3, 2.0 / 3, 1},
		{45, StageFineTune, true, 1, 3, 2.0 / 3, 1},
	}
	r := scheduleRecipe()
	for _, tc := range tests {
		p := r.PlanAt(tc.step)
		c := p.Context
		if p.Stage != tc.stage || c.DMC != tc.dmc || math.Abs(c.ZeroOut-tc.zeroOut) > 1e-12 ||
			math.Abs(p.TargetCR-tc.targetCR) > 1e-12 || math.Abs(c.TargetAlpha-tc.targetAlpha) > 1e-12 ||
			c.CRWeight != tc.crWeight || c.Step != tc.step || c.Hard {
			t.Errorf("step %d: got stage %v dmc %v zeroOut %v CR %v α* %v λ %v; want %v %v %v %v %v %v",
				tc.step, p.Stage, c.DMC, c.ZeroOut, p.TargetCR, c.TargetAlpha, c.CRWeight,
				tc.stage, tc.dmc, tc.zeroOut, tc.targetCR, tc.targetAlpha, tc.crWeight)
		}
	}
}

func TestControlModeHasNoDMCButSameLR(t *testing.T) {
	dmc := scheduleRecipe()
	ctl := dmc
	ctl.Mode = ModeControl
	for s := 0; s < dmc.TotalSteps(); s++ {
		p, q := ctl.PlanAt(s), dmc.PlanAt(s)
		if p.Context.DMC || p.Context.ZeroOut != 1 || p.Context.CRWeight != 0 || p.Context.TargetAlpha != 0 || p.TargetCR != 1 {
			t.Fatalf("control step %d: %+v, want vanilla (no DMC, channel kept, no CR loss)", s, p)
		}
		if p.LR != q.LR || p.Stage != q.Stage {
			t.Fatalf("control step %d: lr %v stage %v, dmc run has %v %v", s, p.LR, p.Stage, q.LR, q.Stage)
		}
	}
}

func TestStepSeedDistinct(t *testing.T) {
	seen := map[uint64]string{}
	for step := 0; step < 50; step++ {
		for rank := 0; rank < 3; rank++ {
			for mb := 0; mb < 4; mb++ {
				s := StepSeed(1, step, rank, mb)
				key := string(rune(step)) + string(rune(rank)) + string(rune(mb))
				if prev, dup := seen[s]; dup {
					t.Fatalf("seed collision between %q and %q", prev, key)
				}
				seen[s] = key
			}
		}
	}
	if StepSeed(1, 3, 0, 0) == StepSeed(2, 3, 0, 0) {
		t.Fatal("the recipe seed does not change the step seeds")
	}
}

func TestFineTuneDecisionsHardIsStraightThroughInStage3Only(t *testing.T) {
	for _, tc := range []struct {
		mode, decisions string
		want            func(Stage) bool
	}{
		{ModeDMC, DecisionsHard, func(s Stage) bool { return s == StageFineTune }},
		{ModeDMC, DecisionsSoft, func(Stage) bool { return false }},
		{ModeControl, DecisionsHard, func(Stage) bool { return false }},
	} {
		r := scheduleRecipe()
		r.Mode, r.FineTuneDecisions = tc.mode, tc.decisions
		for s := 0; s < r.TotalSteps(); s++ {
			p := r.PlanAt(s)
			if got := p.Context.StraightThrough; got != tc.want(p.Stage) || p.Context.Hard {
				t.Fatalf("%s/%s step %d (%v): straight-through %v, hard %v", tc.mode, tc.decisions, s, p.Stage, got, p.Context.Hard)
			}
		}
	}
}

func TestFineTuneDecisionsAnnealDampsTheNoiseOverStage3(t *testing.T) {
	r := scheduleRecipe() // stage 3: steps 35..45 (11 steps)
	r.FineTuneDecisions = DecisionsAnneal
	for _, tc := range []struct {
		step int
		want float64
	}{{0, 0}, {20, 0}, {34, 0}, {35, 0}, {40, 0.5}, {45, 1}} {
		c := r.PlanAt(tc.step).Context
		if math.Abs(c.NoiseDamping-tc.want) > 1e-12 || c.StraightThrough || c.Hard {
			t.Errorf("step %d: damping %v (straight-through %v, hard %v), want %v", tc.step, c.NoiseDamping, c.StraightThrough, c.Hard, tc.want)
		}
	}
	r.Mode = ModeControl
	if d := r.PlanAt(45).Context.NoiseDamping; d != 0 {
		t.Errorf("control run: damping %v, want 0", d)
	}
}

func TestStageLabel(t *testing.T) {
	r := scheduleRecipe() // stages: zero-out, retrofit, fine-tune (steps 35..45)
	for _, tc := range []struct {
		mode, decisions string
		step            int
		want            string
	}{
		{ModeDMC, DecisionsSoft, 0, StageZeroOut.String()},
		{ModeDMC, DecisionsAnneal, 20, StageRetrofit.String()},
		{ModeDMC, DecisionsSoft, 40, StageFineTune.String()},
		{ModeDMC, DecisionsAnneal, 40, StageFineTune.String() + "-anneal"},
		{ModeDMC, DecisionsHard, 40, StageFineTune.String() + "-hard"},
		{ModeControl, DecisionsAnneal, 40, ModeControl},
		{ModeControl, DecisionsHard, 0, ModeControl},
	} {
		r.Mode, r.FineTuneDecisions = tc.mode, tc.decisions
		if got := r.StageLabel(r.PlanAt(tc.step)); got != tc.want {
			t.Errorf("%s/%s step %d: %q, want %q", tc.mode, tc.decisions, tc.step, got, tc.want)
		}
	}
}

func TestDefaultRecipeAnnealsTheFineTuneNoise(t *testing.T) {
	r, err := DefaultRecipe()
	if err != nil {
		t.Fatal(err)
	}
	if r.FineTuneDecisions != DecisionsAnneal {
		t.Fatalf("default fine_tune_decisions %q, want %q (docs/results/scale.md, 2026-12-04)", r.FineTuneDecisions, DecisionsAnneal)
	}
}
