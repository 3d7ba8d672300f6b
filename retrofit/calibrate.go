package retrofit

import (
	"context"
	"fmt"
	"io"
	"iter"
	"math"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
)

// Why calibration: training merges a token with probability σ(a) (the Gumbel-sigmoid relaxation
// with logistic noise), inference merges it when a > 0. After a short retrofit many decision
// logits sit near 0 and the two disagree: a stories260K CR 4 run that trained at CR 3.97
// compressed 6.42× at inference (docs/results/scale.md). Moving the decision offset — the one
// number that shifts every hard decision, carried by exports and read by every cache — to
// where the hard decisions compress held-out text by the target brings inference back to the
// compression the run was trained for.

// CalibrateOptions configure CalibrateOffset.
type CalibrateOptions struct {
	PPL    eval.PPLOptions // the sequences measured (SeqLen, MaxTokens)
	Device string          // where each measurement runs: cpu or cuda
	Batch  int             // sequences decoded together on cuda
	Tol    float64         // relative tolerance on the CR (default 0.01)
	Steps  int             // most measurements (default 14)
	// Progress, when set, hears every measurement: offset, real CR, perplexity.
	Progress io.Writer
}

// CalibrateOffset returns dc with the decision offset at which the hard decisions of w on the
// documents compress them by target (tokens/slots within opt.Tol, else the closest measured),
// and the evaluation at that offset. docs is called once per measurement. The real CR falls as
// the offset grows (a = k[ch] − offset), so the offset is bracketed from dc's and bisected.
func CalibrateOffset(ctx context.Context, w *model.Weights, dc dmc.Config, docs func() iter.Seq2[[]int32, error], target float64, opt CalibrateOptions) (dmc.Config, *eval.PPLResult, error) {
	if !(target > 1) {
		return dc, nil, fmt.Errorf("calibrate: the target compression must be > 1, got %g", target)
	}
	if opt.Tol <= 0 {
		opt.Tol = 0.01
	}
	if opt.Steps <= 0 {
		opt.Steps = 14
	}
	m := &Model{Weights: w}
	measure := func(off float64) (*eval.PPLResult, error) {
		c := dc
		c.DecisionOffset = off
		cache, err := ChooseCache("dmc", &c)
		if err != nil {
			return nil, err
		}
		r, err := Perplexity(ctx, m, cache, docs(), opt.PPL, opt.Device, opt.Batch)
		if err == nil && opt.Progress != nil {
			fmt.Fprintf(opt.Progress, "  decision offset %.4f: real CR %.3f, perplexity %.4f\n", off, r.CR, r.PPL)
		}
		return r, err
	}
	type point struct {
		off float64
		r   *eval.PPLResult
	}
	best := point{}
	var steps int
	try := func(off float64) (point, error) {
		steps++
		r, err := measure(off)
		p := point{off, r}
		if err == nil && (best.r == nil || math.Abs(math.Log(r.CR/target)) < math.Abs(math.Log(best.r.CR/target))) {
			best = p
		}
		return p, err
	}
	done := func(p point) bool { return math.Abs(p.r.CR/target-1) <= opt.Tol }
	start, err := try(dc.DecisionOffset)
	if err != nil {
		return dc, nil, err
	}
	if done(start) {
		return dc, start.r, nil
	}
	// Bracket: lo compresses at least target, hi at most.
	lo, hi := start, start
	for span := 0.5; ; span *= 2 {
		if steps >= opt.Steps || span > 64 {
			return dc, nil, fmt.Errorf("calibrate: no decision offset within ±64 of %g reaches CR %g (real CR %.3f at %g, %.3f at %g): the decisions do not depend on it",
				dc.DecisionOffset, target, lo.r.CR, lo.off, hi.r.CR, hi.off)
		}
		if start.r.CR < target {
			if lo, err = try(start.off - span); err != nil {
				return dc, nil, err
			}
			if lo.r.CR >= target {
				break
			}
			hi = lo
		} else {
			if hi, err = try(start.off + span); err != nil {
				return dc, nil, err
			}
			if hi.r.CR <= target {
				break
			}
			lo = hi
		}
	}
	for !done(best) && steps < opt.Steps {
		mid, err := try((lo.off + hi.off) / 2)
		if err != nil {
			return dc, nil, err
		}
		if mid.r.CR >= target {
			lo = mid
		} else {
			hi = mid
		}
	}
	out := dc
	out.DecisionOffset = best.off
	return out, best.r, nil
}
