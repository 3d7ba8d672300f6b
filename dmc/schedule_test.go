package dmc

import (
	"math"
	"testing"

	"github.com/dmc-project/dmc/model"
)

func TestTargetCR(t *testing.T) {
	tests := []struct {
		step, ramp  int
		final, want float64
	}{
		{0, 100, 4, 1}, {25, 100, 4, 1.75}, {50, 100, 2, 1.5}, {100, 100, 4, 4}, {500, 100, 4, 4},
		{0, 0, 3, 3}, {-5, 100, 4, 1}, {30, 60, 8, 4.5},
	}
	for _, tc := range tests {
		if got := TargetCR(tc.step, tc.ramp, tc.final); math.Abs(got-tc.want) > 1e-15 {
			t.Fatalf("TargetCR(%d, %d, %g) = %g, want %g", tc.step, tc.ramp, tc.final, got, tc.want)
		}
	}
}

func TestAlphaCRConversions(t *testing.T) {
	for _, tc := range []struct{ cr, alpha float64 }{{1, 0}, {2, 0.5}, {4, 0.75}, {8, 0.875}} {
		if got := TargetAlpha(tc.cr); got != tc.alpha {
			t.Fatalf("TargetAlpha(%g) = %g, want %g", tc.cr, got, tc.alpha)
		}
		if got := AchievedCR(tc.alpha); got != tc.cr {
			t.Fatalf("AchievedCR(%g) = %g, want %g", tc.alpha, got, tc.cr)
		}
	}
	if !math.IsInf(AchievedCR(1), 1) {
		t.Fatal("AchievedCR(1) must be +Inf")
	}
}

func TestCRLoss(t *testing.T) {
	tests := []struct {
		mean   []float64
		target float64
		want   float64
	}{
		{[]float64{0.5, 0.5}, 0.5, 0},
		{[]float64{0.2, 0.9}, 0.5, 0.15}, // over-compression is free
		{[]float64{0, 0, 0, 0}, 0.75, 0.75},
		{[]float64{0.1, 0.3, 0.8}, 0.5, (0.4 + 0.2) / 3},
		{nil, 0.5, 0},
	}
	for _, tc := range tests {
		if got := CRLoss(tc.mean, tc.target); math.Abs(got-tc.want) > 1e-15 {
			t.Fatalf("CRLoss(%v, %g) = %g, want %g", tc.mean, tc.target, got, tc.want)
		}
	}
}

// TestCRLossGradFiniteDifference checks the hand-written gradient in float64, away from the kink.
func TestCRLossGradFiniteDifference(t *testing.T) {
	mean := []float64{0.1, 0.45, 0.62, 0.3, 0.9}
	const target, h = 0.5, 1e-6
	grad := make([]float64, len(mean))
	CRLossGrad(mean, target, grad)
	for i := range mean {
		p, m := append([]float64(nil), mean...), append([]float64(nil), mean...)
		p[i] += h
		m[i] -= h
		fd := (CRLoss(p, target) - CRLoss(m, target)) / (2 * h)
		if math.Abs(fd-grad[i]) > 1e-8 {
			t.Fatalf("∂L/∂ᾱ_%d = %g, finite difference %g", i, grad[i], fd)
		}
	}
}

func TestZeroOutFactor(t *testing.T) {
	tests := []struct {
		step, steps int
		want        float64
	}{
		{0, 250, 1}, {100, 250, 0.5}, {200, 250, 0}, {249, 250, 0}, {50, 100, 0.375}, {0, 0, 0},
	}
	for _, tc := range tests {
		if got := ZeroOutFactor(tc.step, tc.steps); math.Abs(got-tc.want) > 1e-15 {
			t.Fatalf("ZeroOutFactor(%d, %d) = %g, want %g", tc.step, tc.steps, got, tc.want)
		}
	}
}

func TestZeroDecisionRows(t *testing.T) {
	mc := tinyConfig(16, 4, 2, 2, model.RoPEHalf) // D = 4
	for _, channel := range []int{-1, 0} {
		p, err := model.RandomParams[float32](mc, 1)
		if err != nil {
			t.Fatal(err)
		}
		orig := model.Convert[float32](p)
		cfg := DefaultConfig()
		cfg.DecisionChannel = channel
		ch := cfg.Channel(4)
		if err := ZeroDecisionRows(p, cfg); err != nil {
			t.Fatal(err)
		}
		for li := range p.Layers {
			for name, pair := range map[string][2][]float32{
				"wq": {p.Layers[li].Wq, orig.Layers[li].Wq}, "wk": {p.Layers[li].Wk, orig.Layers[li].Wk},
				"wv": {p.Layers[li].Wv, orig.Layers[li].Wv},
			} {
				for i, v := range pair[0] {
					row := i / mc.Dim
					zeroed := name != "wv" && row%4 == ch
					if zeroed && v != 0 || !zeroed && v != pair[1][i] {
						t.Fatalf("channel %d layer %d %s[%d] (row %d) = %g, original %g", ch, li, name, i, row, v, pair[1][i])
					}
				}
			}
		}
	}
	bad := DefaultConfig()
	bad.DecisionChannel = 9
	p, _ := model.RandomParams[float64](mc, 1)
	if err := ZeroDecisionRows(p, bad); err == nil {
		t.Fatal("want an error for a channel outside the head")
	}
}

func TestAutoDecisionOffset(t *testing.T) {
	for _, tc := range []struct{ cr, want float64 }{{1, 4.6}, {2, 1.95}, {4, 1.73}, {8, 1.73}, {1.2, 3.14}} {
		if got := AutoDecisionOffset(tc.cr); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("AutoDecisionOffset(%g) = %g, want %g", tc.cr, got, tc.want)
		}
		// The initial merge rate under logistic noise is p0 = 1/(1+e^offset) ≤ α*/4 (up to the clamps).
		if p0 := 1 / (1 + math.Exp(AutoDecisionOffset(tc.cr))); p0 > 0.151 || p0 < 0.0099 {
			t.Errorf("CR %g: initial merge rate %g outside [0.01, 0.15]", tc.cr, p0)
		}
	}
}
