package trainer

import (
	"strings"
	"testing"
)

func TestCRLagWatch(t *testing.T) {
	r := Recipe{Mode: ModeDMC, TargetCR: 2, CRLossWeight: 1}
	r.DecisionOffset = 5
	run := func(alpha func(step int) float64) []string {
		var w crLagWatch
		var out []string
		for s := 1; s <= 400; s++ {
			target := 1 + float64(min(s, 200))/200 // ramp to 2 over 200 steps
			m := Metrics{Step: s, TargetCR: &target, MeanAlpha: alpha(s)}
			if msg := w.observe(&r, m); msg != "" {
				out = append(out, msg)
			}
		}
		return out
	}
	tests := []struct {
		name  string
		alpha func(int) float64
		warns int
	}{
		{"decisions stuck near zero", func(int) float64 { return 0.01 }, 2}, // once, then again 200 steps later
		{"decisions follow the schedule", func(s int) float64 { tc := 1 + float64(min(s, 200))/200; return 1 - 1/tc }, 0},
		{"over-compressing", func(int) float64 { return 0.7 }, 0},
	}
	for _, tc := range tests {
		got := run(tc.alpha)
		if len(got) != tc.warns {
			t.Errorf("%s: %d warnings, want %d: %q", tc.name, len(got), tc.warns, got)
		}
		for _, m := range got {
			if !strings.Contains(m, "decision_offset") || !strings.Contains(m, "lags") {
				t.Errorf("%s: warning does not say what to change: %q", tc.name, m)
			}
		}
	}
	// Control runs never warn.
	var w crLagWatch
	c := Recipe{Mode: ModeControl, TargetCR: 2}
	for s := 1; s < 300; s++ {
		if msg := w.observe(&c, Metrics{Step: s}); msg != "" {
			t.Fatalf("control run warned: %q", msg)
		}
	}
}
