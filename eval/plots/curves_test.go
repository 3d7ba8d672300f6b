package plots

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadCurve(t *testing.T) {
	c, err := LoadCurve(Input{Path: td("metrics-cr4.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	if c.Label != "cr4" || len(c.Loss) != 12 {
		t.Fatalf("label %q, %d points; want cr4, 12", c.Label, len(c.Loss))
	}
	// Tokens accumulate the per-step counts; stage 1 has no achieved CR.
	if c.Tokens[0] != 16384 || c.Tokens[1] != 2*16384 || !math.IsNaN(c.CR[0]) || !(c.CR[11] > 3) {
		t.Errorf("tokens %v…, CR %v … %v", c.Tokens[:2], c.CR[0], c.CR[11])
	}
	dir := t.TempDir()
	runDir := filepath.Join(dir, "runs", "control")
	_ = os.MkdirAll(runDir, 0o755)
	b, _ := os.ReadFile(td("metrics-control.jsonl"))
	_ = os.WriteFile(filepath.Join(runDir, "metrics.jsonl"), b, 0o644)
	if c, err := LoadCurve(Input{Path: filepath.Join(runDir, "metrics.jsonl")}); err != nil || c.Label != "control" {
		t.Errorf("a run's metrics.jsonl: label %q, %v; want the run directory's name", c.Label, err)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"not JSON", "step 1 loss 3\n", "one JSON object per line"},
		{"not metrics", `{"ppl": 3}` + "\n", "not a metrics.jsonl"},
		{"empty", "\n", "no metrics lines"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".jsonl")
		_ = os.WriteFile(p, []byte(tc.body), 0o644)
		if _, err := LoadCurve(Input{Path: p}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

func TestWriteCurves(t *testing.T) {
	dmcRun, err := LoadCurve(Input{Path: td("metrics-cr4.jsonl"), Label: "DMC CR 4"})
	if err != nil {
		t.Fatal(err)
	}
	control, err := LoadCurve(Input{Path: td("metrics-control.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// With a DMC run: loss and CR side by side, twice the width.
	f, err := WriteCurves(dir, []Curve{control, dmcRun}, Options{Width: 300, Height: 200})
	if err != nil {
		t.Fatal(err)
	}
	decodePNG(t, f, 600, 200)
	// Control runs only: the loss alone.
	if f, err = WriteCurves(dir, []Curve{control}, Options{Width: 300, Height: 200}); err != nil {
		t.Fatal(err)
	}
	decodePNG(t, f, 300, 200)
	if _, err := WriteCurves(dir, nil, Options{}); err == nil {
		t.Error("no curves: no error")
	}
}
