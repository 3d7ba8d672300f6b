package trainer

import (
	"fmt"
	"math"
)

// crLagWatch notices when the achieved compression rate lags the schedule: the decisions are
// not learning (offset too far from the threshold, too weak a CR loss, or too few steps). It
// smooths the per-step achieved merge rate and warns at most once per lagWarnEvery steps.
type crLagWatch struct {
	ema    float64 // smoothed mean α
	n      int
	warned int // step of the last warning (0 = none)
}

const (
	lagSmoothing = 0.05 // EMA weight of a new step (about 20 steps of memory)
	lagWarnEvery = 200
)

// observe takes one step's metrics and returns a warning line, or "".
func (w *crLagWatch) observe(r *Recipe, m Metrics) string {
	if m.TargetCR == nil || r.Mode != ModeDMC {
		w.n = 0
		return ""
	}
	if w.n == 0 {
		w.ema = m.MeanAlpha
	} else {
		w.ema += lagSmoothing * (m.MeanAlpha - w.ema)
	}
	w.n++
	target := *m.TargetCR
	final := r.TargetCR
	// Judge only once the schedule asks for a real part of the final compression and the
	// average has had time to settle.
	if w.n < 40 || target < 1+0.3*(final-1) || (w.warned > 0 && m.Step-w.warned < lagWarnEvery) {
		return ""
	}
	achieved := 1 / (1 - math.Min(w.ema, 0.999))
	if achieved >= 1+0.5*(target-1) {
		return ""
	}
	w.warned = m.Step
	return fmt.Sprintf("warning: step %d: the achieved compression %.2fx lags the schedule's %.2fx: the decisions are not learning fast enough. "+
		"Lower decision_offset (now %g, e.g. --set decision_offset=%g), raise cr_loss_weight (now %g), or train longer (--steps).",
		m.Step, achieved, target, r.DecisionOffset, math.Max(0.5, r.DecisionOffset/2), r.CRLossWeight)
}
