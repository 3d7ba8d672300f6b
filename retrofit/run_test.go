package retrofit

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
)

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

// NaN or infinite weights are refused at load, naming the tensor.
func TestLoadRefusesNonFiniteWeights(t *testing.T) {
	cfg, err := model.Preset("demo-small")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
		w, err := model.RandomParams[float32](cfg, 1)
		if err != nil {
			t.Fatal(err)
		}
		w.Layers[1].Wk[7] = bad
		dir := filepath.Join(t.TempDir(), "m")
		if err := checkpoints.WriteHF(dir, w, "fp32", nil, 1<<40); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "run")
		if _, err := Run(context.Background(), Spec{Model: dir, Data: dir, Out: out}, nil); err == nil {
			t.Errorf("Run of a model with %v weights: no error", bad)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("a refused run left its folder %s behind", out)
		}
		for name, load := range map[string]func() error{
			"LoadModel":      func() error { _, err := LoadModel(dir, LoadOptions{}); return err },
			"ResolveWeights": func() error { _, _, err := ResolveWeights(dir, ""); return err },
		} {
			err := load()
			if err == nil || !strings.Contains(err.Error(), "model.layers.1.self_attn.k_proj.weight") || !strings.Contains(err.Error(), "index 7") {
				t.Errorf("%s with %v: %v, want an error naming the tensor and index", name, bad, err)
			}
		}
	}
}

func TestCRNote(t *testing.T) {
	dmcRecipe := trainer.Recipe{Mode: trainer.ModeDMC, TargetCR: 4}
	for _, tc := range []struct {
		name string
		r    Result
		want bool
	}{
		{"over-compressed", Result{Recipe: dmcRecipe, Heldout: &eval.PPLResult{CR: 6.4}}, true},
		{"under-compressed", Result{Recipe: dmcRecipe, Heldout: &eval.PPLResult{CR: 3.5}}, true},
		{"on target", Result{Recipe: dmcRecipe, Heldout: &eval.PPLResult{CR: 4.2}}, false},
		{"no evaluation", Result{Recipe: dmcRecipe}, false},
		{"control", Result{Recipe: trainer.Recipe{Mode: trainer.ModeControl, TargetCR: 1}, Heldout: &eval.PPLResult{CR: 1}}, false},
	} {
		note := tc.r.CRNote()
		if (note != "") != tc.want || (tc.want && !strings.Contains(note, "--calibrate-cr")) {
			t.Errorf("%s: note %q", tc.name, note)
		}
	}
}
