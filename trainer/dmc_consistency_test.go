package trainer

import (
	"math"
	"testing"

	"github.com/dmc-project/dmc/dmc"
)

// The trainer's schedule must agree with the DMC math package's definitions (dmc-spec.md §3,
// §6) at the reference zero-out fraction 0.8.
func TestScheduleAgreesWithDMCPackage(t *testing.T) {
	r := scheduleRecipe()
	for s := 0; s < r.TotalSteps(); s++ {
		p := r.PlanAt(s)
		stage, i := r.StageAt(s)
		switch stage {
		case StageZeroOut:
			if want := dmc.ZeroOutFactor(i, r.ZeroOutSteps); math.Abs(p.Context.ZeroOut-want) > 1e-15 {
				t.Fatalf("step %d: zero-out %v, dmc.ZeroOutFactor %v", s, p.Context.ZeroOut, want)
			}
		case StageRetrofit:
			want := dmc.TargetCR(i, r.Ramp(), r.TargetCR)
			if math.Abs(p.TargetCR-want) > 1e-15 || math.Abs(p.Context.TargetAlpha-dmc.TargetAlpha(want)) > 1e-15 {
				t.Fatalf("step %d: CR %v α* %v, dmc says %v %v", s, p.TargetCR, p.Context.TargetAlpha, want, dmc.TargetAlpha(want))
			}
		}
	}
}
