package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const plotData = "../../../eval/plots/testdata"

func TestEvalPlot(t *testing.T) {
	out := filepath.Join(t.TempDir(), "plots")
	stdout, stderr, code := run(t, "eval", "plot", "--out", out, "--width", "300", "--height", "200",
		filepath.Join(plotData, "compare.json"), "DMC="+filepath.Join(plotData, "ppl-dmc.json"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, name := range []string{"ppl-vs-cr.png", "acc-vs-cr.png", "acc-vs-cr-piqa.png", "acc-vs-cr-lambada_openai.png", "head-cr.png"} {
		p := filepath.Join(out, name)
		if !strings.Contains(stdout, p) {
			t.Errorf("stdout %q does not list %s", stdout, p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
}

// metrics.jsonl files (training runs) give the training curves, alone or next to results.
func TestEvalPlotTrainingCurves(t *testing.T) {
	out := filepath.Join(t.TempDir(), "plots")
	stdout, stderr, code := run(t, "eval", "plot", "--out", out, "--width", "300", "--height", "200",
		"control="+filepath.Join(plotData, "metrics-control.jsonl"), filepath.Join(plotData, "metrics-cr4.jsonl"), filepath.Join(plotData, "ppl-dmc.json"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, name := range []string{"training-curves.png", "head-cr.png"} {
		if p := filepath.Join(out, name); !strings.Contains(stdout, p) {
			t.Errorf("stdout %q does not list %s", stdout, p)
		}
	}
}

func TestEvalPlotErrors(t *testing.T) {
	out := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no files", []string{"eval", "plot", "--out", out}, "needs one or more results JSONs"},
		{"no --out", []string{"eval", "plot", filepath.Join(plotData, "compare.json")}, `required flag(s) "out"`},
		{"missing file", []string{"eval", "plot", "--out", out, filepath.Join(out, "nope.json")}, "nope.json does not exist"},
		{"no per-head CR", []string{"eval", "plot", "--out", out, "--plots", "heads", filepath.Join(plotData, "compare.json")},
			"compare.json has no per-head CR; run dmc eval --model DMC_RUN --tasks ppl"},
		{"not a results file", []string{"eval", "plot", "--out", out, filepath.Join(plotData, "not-results.json")}, "is not a results JSON of dmc eval"},
		{"unknown plot", []string{"eval", "plot", "--out", out, "--plots", "ppl,pie", filepath.Join(plotData, "compare.json")}, `unknown plot "pie"`},
		{"tiny", []string{"eval", "plot", "--out", out, "--width", "20", filepath.Join(plotData, "compare.json")}, "--width must be ≥ 200"},
		{"bad metrics file", []string{"eval", "plot", "--out", out, filepath.Join(plotData, "compare.json") + "l"}, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "panic") {
				t.Fatalf("exit %d, stderr %q; want an error mentioning %q", code, stderr, tc.want)
			}
		})
	}
}
