package retrofit

import "testing"

// --target-cr keeps stage lengths a recipe states and derives only those it leaves at 0;
// --steps rescales all of them to the requested total.
func TestRetrofitRecipeResolution(t *testing.T) {
	tests := []struct {
		opts                    Spec
		zero, ramp, retro, fine int
		targetCR                float64
	}{
		{Spec{Config: "demo-retrofit", TargetCR: 4}, 20, 100, 120, 100, 4},
		{Spec{Config: "default", TargetCR: 3}, 20, 200, 200, 40, 3},
		{Spec{Config: "demo-retrofit", Steps: 120}, 10, 50, 60, 50, 2},
	}
	for _, tc := range tests {
		r, err := ResolveRecipe(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if r.ZeroOutSteps != tc.zero || r.RampSteps != tc.ramp || r.RetrofitSteps != tc.retro || r.FineTuneSteps != tc.fine || r.TargetCR != tc.targetCR {
			t.Errorf("%+v: stages %d/%d/%d/%d CR %g, want %d/%d/%d/%d CR %g", tc.opts, r.ZeroOutSteps, r.RampSteps, r.RetrofitSteps,
				r.FineTuneSteps, r.TargetCR, tc.zero, tc.ramp, tc.retro, tc.fine, tc.targetCR)
		}
	}
}
