package retrofit

import (
	"context"
	"math"
	"os"
	"testing"

	"github.com/dmc-project/dmc/internal/dmctest"
)

// A training-free policy at --cr X on benchmarks reaches real CR X on each task's own
// sequences (its ratio solved per task), reports it as cr,none, and a policy at CR 1 scores
// exactly as the vanilla cache.
func TestBenchmarkPolicyMatchesCRPerTask(t *testing.T) {
	model := dmctest.AssetPath("tinyllamas-stories260K/stories260K.bin")
	if _, err := os.Stat(model); err != nil {
		t.Skipf("test asset %s not found: %v", model, err)
	}
	spec := EvalSpec{Model: model, Tokenizer: dmctest.AssetPath("tinyllamas-stories260K/tok512.bin"), Tasks: "copa,arc_easy",
		DataDir: dmctest.AssetPath(""), Limit: 12}
	run := func(cache string, cr float64) map[string]map[string]any {
		t.Helper()
		s := spec
		s.Cache, s.CR = cache, cr
		rep, err := Evaluate(context.Background(), s, EvalHooks{})
		if err != nil {
			t.Fatalf("%s at CR %g: %v", cache, cr, err)
		}
		return rep.Benchmarks.Results
	}
	vanilla := run("vanilla", 0)
	for _, tc := range []struct {
		policy string
		cr     float64
	}{{"window", 3.1}, {"h2o", 2.04}, {"tova", 1}} {
		got := run(tc.policy, tc.cr)
		for task, m := range got {
			cr, _ := m["cr,none"].(float64)
			if cr < tc.cr-1e-9 || cr > tc.cr*1.05 {
				t.Errorf("%s --cr %g on %s: real CR %v", tc.policy, tc.cr, task, m["cr,none"])
			}
			if tc.cr == 1 && m["acc,none"] != vanilla[task]["acc,none"] {
				t.Errorf("%s at CR 1 on %s: acc %v, vanilla %v", tc.policy, task, m["acc,none"], vanilla[task]["acc,none"])
			}
		}
		if len(got) != 2 || math.IsNaN(got["copa"]["acc,none"].(float64)) {
			t.Errorf("%s: results %v", tc.policy, got)
		}
	}
}
