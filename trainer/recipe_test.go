package trainer

import (
	"flag"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/configs"
)

func TestEmbeddedRecipesAreValid(t *testing.T) {
	names := configs.Names("recipes")
	for _, want := range []string{"default", "stories260k", "llama2-7b"} {
		if !contains(names, want) {
			t.Fatalf("embedded recipes %v lack %q", names, want)
		}
	}
	for _, name := range names {
		r, err := LoadRecipe(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Name != name {
			t.Errorf("recipe file %s.yaml says name %q", name, r.Name)
		}
	}
}

func TestLlama27BReferenceRecipe(t *testing.T) {
	r, err := LoadRecipe("llama2-7b")
	if err != nil {
		t.Fatal(err)
	}
	if r.Beta1 != 0.9 || r.Beta2 != 0.95 || r.WeightDecay != 0.1 || r.GradClip != 1 || r.LR != 3e-5 {
		t.Fatalf("optimiser %+v does not match the paper", r)
	}
	if got := r.LR * r.LRFinalFrac; math.Abs(got-3e-6) > 1e-15 {
		t.Fatalf("final lr %v, want 3e-6", got)
	}
	if r.TokensPerStep() != 1024*4096 || r.MicroBatchSize()*r.GradAccum != 1024 {
		t.Fatalf("batch %d×%d in %d micro-batches, want 1024×4096", r.BatchSize, r.SeqLen, r.GradAccum)
	}
	if r.ZeroOutSteps != 250 || r.Ramp() != 6000 || r.Retrofit() != 6000 || r.FineTuneSteps != 2000 || r.TotalSteps() != 8250 {
		t.Fatalf("stages %d/%d/%d/%d", r.ZeroOutSteps, r.Ramp(), r.Retrofit(), r.FineTuneSteps)
	}
	if err := r.ApplyOverrides([]string{"target_cr=4"}); err != nil {
		t.Fatal(err)
	}
	if r.Ramp() != 18000 || r.Retrofit() != 18000 {
		t.Fatalf("4× ramp = %d steps, want 18000 (6K per unit of CR)", r.Ramp())
	}
	resolved := r
	resolved.Resolve()
	if resolved.RampSteps != 18000 || resolved.RetrofitSteps != 18000 || resolved.TotalSteps() != r.TotalSteps() || resolved.PlanAt(5000) != r.PlanAt(5000) {
		t.Fatalf("Resolve changed the schedule: %+v", resolved)
	}
	if p := r.PlanAt(250 + 9000); math.Abs(p.TargetCR-2.5) > 1e-12 || math.Abs(p.Context.TargetAlpha-0.6) > 1e-12 {
		t.Fatalf("mid-ramp plan %+v, want CR 2.5, α* 0.6", p)
	}
}

func TestRecipeErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown field", "lr: 1e-3\nlearning_rate: 1e-3\n", `unknown field "learning_rate" at line 2`},
		{"target CR below 1", "target_cr: 0.5\n", "target CR must be ≥ 1"},
		{"batch not divisible", "batch_size: 6\ngrad_accum: 4\n", "must be a multiple of grad_accum"},
		{"bad mode", "mode: vanilla\n", `mode must be "dmc" or "control"`},
		{"bad schedule", "lr_schedule: linear\n", "lr_schedule must be"},
		{"bad fine-tune decisions", "fine_tune_decisions: gumbel\n", "fine_tune_decisions must be"},
		{"head cap below the target", "target_cr: 4\nhead_cr_cap: 2\n", "head_cr_cap must be 0 (off)"},
		{"ramp longer than stage 2", "ramp_steps: 50\nretrofit_steps: 10\n", "retrofit_steps (10) must be ≥ ramp_steps (50)"},
		{"no steps", "target_cr: 1\nzero_out_steps: 0\nfine_tune_steps: 0\n", "the recipe has no steps"},
		{"wrong type", "seq_len: long\n", "cannot unmarshal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := ParseRecipe([]byte(tc.yaml))
			if err == nil {
				err = r.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	// Several problems are all reported at once.
	r, _ := ParseRecipe([]byte("lr: -1\nbeta2: 1\n"))
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "lr must be > 0") || !strings.Contains(err.Error(), "beta2") {
		t.Fatalf("error %v, want both lr and beta2 reported", err)
	}
}

func TestRecipeInheritsDefaultsAndRoundTrips(t *testing.T) {
	def, err := DefaultRecipe()
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseRecipe([]byte("name: mine\nlr: 1e-3\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r.LR != 1e-3 || r.Name != "mine" || r.Beta2 != def.Beta2 || r.SeqLen != def.SeqLen {
		t.Fatalf("partial recipe did not inherit the defaults: %+v", r)
	}
	y, err := r.YAML()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRecipe(y)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("resolved YAML does not round-trip:\n%s\n%+v\n%+v", y, back, r)
	}
	p := filepath.Join(t.TempDir(), "r.yaml")
	if err := os.WriteFile(p, y, 0o644); err != nil {
		t.Fatal(err)
	}
	if fromFile, err := LoadRecipe(p); err != nil || !reflect.DeepEqual(fromFile, r) {
		t.Fatalf("LoadRecipe(file) = %+v, %v", fromFile, err)
	}
	if _, err := LoadRecipe("no-such-recipe"); err == nil || !strings.Contains(err.Error(), "stories260k") {
		t.Fatalf("unknown recipe error %v should list the built-in recipes", err)
	}
}

func TestRecipeOverrides(t *testing.T) {
	r, _ := DefaultRecipe()
	if err := r.ApplyOverrides([]string{"lr=1e-4", "target-cr=3", "mode=control", "seed=42"}); err != nil {
		t.Fatal(err)
	}
	if r.LR != 1e-4 || r.TargetCR != 3 || r.Mode != ModeControl || r.Seed != 42 {
		t.Fatalf("overrides not applied: %+v", r)
	}
	for _, bad := range []struct{ kv, want string }{
		{"lrate=1", `unknown recipe field "lrate"`},
		{"lr", "want key=value"},
		{"batch_size=eight", "cannot use \"eight\""},
	} {
		if err := r.ApplyOverrides([]string{bad.kv}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("override %q: error %v, want %q", bad.kv, err, bad.want)
		}
	}

	var o Overrides
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	o.Register(fs, "")
	if err := fs.Parse([]string{"--lr", "2e-4", "--batch-size=16", "--grad-accum", "4"}); err != nil {
		t.Fatal(err)
	}
	r2, _ := DefaultRecipe()
	if err := o.Apply(&r2); err != nil {
		t.Fatal(err)
	}
	if r2.LR != 2e-4 || r2.BatchSize != 16 || r2.GradAccum != 4 || r2.SeqLen != 256 {
		t.Fatalf("flag overrides: %+v", r2)
	}
	fs2 := flag.NewFlagSet("train", flag.ContinueOnError)
	fs2.SetOutput(new(strings.Builder))
	new(Overrides).Register(fs2, "")
	if err := fs2.Parse([]string{"--seq-len", "x"}); err == nil {
		t.Fatal("a non-integer --seq-len was accepted")
	}
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func TestRecipeEndingInZeroOutIsRejected(t *testing.T) {
	r, err := ParseRecipe([]byte("zero_out_steps: 30\nramp_steps: 0\nretrofit_steps: 0\nfine_tune_steps: 0\ntarget_cr: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	r.Resolve()
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "ends inside the zero-out stage") {
		t.Fatalf("Validate = %v", err)
	}
	r.Mode = ModeControl
	if err := r.Validate(); err != nil {
		t.Fatalf("a control run of zero-out length only is fine: %v", err)
	}
}

// Stating decision_channel or decision_offset (in a file or with --set) turns the matching
// automatic choice off; the defaults leave both on.
func TestRecipeExplicitDMCSettingsTurnAutoOff(t *testing.T) {
	tests := []struct {
		name             string
		yaml             string
		set              []string
		autoCh, autoOffs bool
	}{
		{"defaults", "", nil, true, true},
		{"file gives the channel", "decision_channel: 0\n", nil, false, true},
		{"file gives the offset", "decision_offset: 2\n", nil, true, false},
		{"file gives both and asks for auto", "decision_offset: 2\nauto_offset: true\n", nil, true, true},
		{"--set offset", "", []string{"decision_offset=3"}, true, false},
		{"--set channel", "", []string{"decision_channel=-2"}, false, true},
	}
	for _, tc := range tests {
		r, err := ParseRecipe([]byte(tc.yaml))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.ApplyOverrides(tc.set); err != nil {
			t.Fatal(err)
		}
		if r.AutoChannel != tc.autoCh || r.AutoOffset != tc.autoOffs {
			t.Errorf("%s: auto_channel %v auto_offset %v, want %v %v", tc.name, r.AutoChannel, r.AutoOffset, tc.autoCh, tc.autoOffs)
		}
	}
}
