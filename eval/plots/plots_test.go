package plots

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func td(name string) string { return filepath.Join("testdata", name) }

func load(t *testing.T, names ...string) []Run {
	t.Helper()
	var in []Input
	for _, n := range names {
		in = append(in, Input{Path: td(n)})
	}
	runs, err := LoadAll(in)
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

func TestLoad(t *testing.T) {
	type want struct {
		label, policy string
		cr, ppl       float64
		scores        map[string]Score // "task/metric" → score (NaN stderr: none)
		heads         [2]int           // layers, heads
	}
	nan := math.NaN()
	tests := []struct {
		file  string
		label string
		want  []want
	}{
		{"compare.json", "", []want{
			{label: "base.bin", policy: "vanilla", cr: 1, ppl: 4.0, scores: map[string]Score{
				"piqa/acc": {0.5, 0.05}, "piqa/acc_norm": {0.48, 0.049}, "lambada_openai/acc": {0.02, 0.014},
				"lambada_openai/perplexity": {2000.5, nan}}},
			{label: "base.bin", policy: "window", cr: 4, ppl: 4.2, scores: map[string]Score{"piqa/acc": {0.46, 0.05}}},
			{label: "base.bin", policy: "h2o", cr: 4, ppl: 4.3, scores: map[string]Score{"piqa/acc": {0.47, 0.05}}},
		}},
		{"compare-ppl.json", "control", []want{
			{label: "control", policy: "vanilla", cr: 1, ppl: 4.5},
			{label: "control", policy: "streaming", cr: 2, ppl: 4.6},
			{label: "control", policy: "tova", cr: 2, ppl: 4.9},
		}},
		// config.real_cr wins over the ppl task's cr; the ppl pseudo-task is not a benchmark.
		{"harness-dmc.json", "", []want{{label: "cr4 (step-0000100)", policy: "dmc", cr: 4.2, ppl: 4.9, scores: map[string]Score{
			"piqa/acc": {0.52, 0.05}, "piqa/acc_norm": {0.5, 0.05}, "arc_easy/acc": {0.3, nan}}}}},
		// A vanilla cache without a measured CR is CR 1.
		{"harness-vanilla.json", "", []want{{label: "base.bin", policy: "vanilla", cr: 1, scores: map[string]Score{
			"copa/acc": {0.65, 0.048}, "mmlu/acc": {0.23, 0.025}}}}},
		{"ppl-dmc.json", "DMC", []want{{label: "DMC", policy: "dmc", cr: 4, ppl: 5.1, heads: [2]int{2, 3}}}},
		{"ppl-vanilla.json", "", []want{{label: "base.bin", policy: "vanilla", cr: 1, ppl: 4.0, heads: [2]int{2, 2}}}},
		{"nothing.json", "", []want{{label: "m", policy: "vanilla", cr: 1}}},
	}
	same := func(a, b float64) bool { return a == b || (math.IsNaN(a) && math.IsNaN(b)) }
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			runs, err := Load(Input{Path: td(tc.file), Label: tc.label})
			if err != nil {
				t.Fatal(err)
			}
			if len(runs) != len(tc.want) {
				t.Fatalf("%d runs, want %d", len(runs), len(tc.want))
			}
			for i, w := range tc.want {
				r := runs[i]
				if r.File != td(tc.file) || r.Label != w.label || r.Policy != w.policy || r.CR != w.cr || r.PPL != w.ppl {
					t.Errorf("run %d = {file %s label %q policy %s cr %g ppl %g}, want {%q %s %g %g}", i, r.File, r.Label, r.Policy, r.CR, r.PPL, w.label, w.policy, w.cr, w.ppl)
				}
				if _, ok := r.Tasks["ppl"]; ok {
					t.Errorf("run %d: the ppl pseudo-task was read as a benchmark", i)
				}
				for k, s := range w.scores {
					task, metric, _ := strings.Cut(k, "/")
					got, ok := r.Tasks[task][metric]
					if !ok || !same(got.Value, s.Value) || !same(got.Stderr, s.Stderr) {
						t.Errorf("run %d %s = %+v (present %v), want %+v", i, k, got, ok, s)
					}
				}
				if l, h := len(r.PerHeadCR), 0; l > 0 {
					h = len(r.PerHeadCR[0])
					if [2]int{l, h} != w.heads {
						t.Errorf("run %d per-head CR %d × %d, want %v", i, l, h, w.heads)
					}
				} else if w.heads != [2]int{} {
					t.Errorf("run %d has no per-head CR, want %v", i, w.heads)
				}
			}
		})
	}
	if r := load(t, "ppl-dmc.json")[0]; r.PerHeadCR[0][2] != 300 || r.PerHeadCR[1][0] != 4 {
		t.Errorf("per-head CR %v: rows are layers, columns heads", r.PerHeadCR)
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct{ file, want string }{
		{"absent.json", "does not exist"},
		{"truncated.json", "is not a JSON object"},
		{"not-results.json", "is not a results JSON of dmc eval"},
		{"ppl-ragged.json", "layer 1 has 1 heads, layer 0 has 2"},
		{"ppl-cr-below-one.json", "a compression rate is ≥ 1"},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Load(Input{Path: td(tc.file)})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.file) {
				t.Fatalf("error %v, want one naming %s and saying %q", err, tc.file, tc.want)
			}
		})
	}
	if _, err := LoadAll(nil); err == nil || !strings.Contains(err.Error(), "no results JSON") {
		t.Fatalf("LoadAll(nil) error %v", err)
	}
}

func TestParseInput(t *testing.T) {
	tests := []struct {
		arg  string
		want Input
	}{
		{td("compare.json"), Input{Path: td("compare.json")}},
		{"DMC CR 4=" + td("ppl-dmc.json"), Input{Path: td("ppl-dmc.json"), Label: "DMC CR 4"}},
		{"a=b.json", Input{Path: "b.json", Label: "a"}},
		{"runs/a=b.json", Input{Path: "runs/a=b.json"}}, // a '/' before '=': a path
		{"=x.json", Input{Path: "=x.json"}},
	}
	for _, tc := range tests {
		if got := ParseInput(tc.arg); got != tc.want {
			t.Errorf("ParseInput(%q) = %+v, want %+v", tc.arg, got, tc.want)
		}
	}
}

func TestSelectionErrors(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		plots []string
		want  string
	}{
		{"heads of a compare file", []string{"compare.json"}, []string{PlotHeads}, "compare.json has no per-head CR; run dmc eval"},
		{"ppl of a benchmark file without ppl", []string{"harness-vanilla.json"}, []string{PlotPPL}, "harness-vanilla.json has no perplexity with a real CR"},
		{"acc of a ppl report", []string{"ppl-dmc.json"}, []string{PlotAcc}, `ppl-dmc.json has no benchmark "acc" scores`},
		{"every file must feed every plot asked for", []string{"ppl-dmc.json", "compare-ppl.json"}, []string{PlotPPL, PlotHeads}, "compare-ppl.json has no per-head CR"},
		{"scores without a CR", []string{"compare-no-cr.json"}, nil, "the h2o cache has benchmark scores but no real CR"},
		{"nothing to plot", []string{"compare.json", "nothing.json"}, nil, "nothing.json has nothing to plot"},
		{"unknown plot", []string{"compare.json"}, []string{"bars"}, `unknown plot "bars"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files, err := Write(dir, load(t, tc.files...), Options{Plots: tc.plots, Width: 200, Height: 150})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			if len(files) != 0 {
				t.Fatalf("wrote %v before refusing", files)
			}
		})
	}
	if _, err := Write(t.TempDir(), load(t, "compare.json"), Options{Width: 100, Height: 100}); err == nil || !strings.Contains(err.Error(), "width must be") {
		t.Fatalf("tiny plot: error %v", err)
	}
}

// decodePNG checks that path is a PNG of w × h pixels that is not blank.
func decodePNG(t *testing.T, path string, w, h int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if got := img.Bounds(); got.Dx() != w || got.Dy() != h {
		t.Fatalf("%s is %d × %d, want %d × %d", path, got.Dx(), got.Dy(), w, h)
	}
	colors := map[[4]uint32]bool{}
	for y := 0; y < h; y += 3 {
		for x := 0; x < w; x += 3 {
			r, g, b, a := img.At(x, y).RGBA()
			colors[[4]uint32{r, g, b, a}] = true
		}
	}
	if len(colors) < 3 {
		t.Fatalf("%s looks blank: %d colours", path, len(colors))
	}
}

func TestWritePNGs(t *testing.T) {
	tests := []struct {
		name  string
		files []string
		o     Options
		want  map[string][2]int // file → width, height
	}{
		{"every plot, automatically", []string{"compare.json", "harness-dmc.json", "ppl-dmc.json", "ppl-vanilla.json", "compare-ppl.json"},
			Options{Width: 320, Height: 240}, map[string][2]int{
				"ppl-vs-cr.png": {320, 240}, "acc-vs-cr.png": {2 * 160, 2 * 120}, // piqa, lambada_openai, arc_easy: 2 × 2 panels
				"acc-vs-cr-piqa.png": {320, 240}, "acc-vs-cr-lambada_openai.png": {320, 240}, "acc-vs-cr-arc_easy.png": {320, 240},
				"head-cr.png": {320, 240}, // the DMC report only: vanilla is not drawn without --plots heads
			}},
		{"acc_norm", []string{"compare.json", "harness-dmc.json"}, Options{Plots: []string{PlotAcc}, Metric: "acc_norm", Width: 400, Height: 300},
			map[string][2]int{"acc_norm-vs-cr.png": {200, 150}, "acc_norm-vs-cr-piqa.png": {400, 300}}},
		{"heat maps of several models", []string{"ppl-dmc.json", "ppl-vanilla.json"}, Options{Plots: []string{PlotHeads}, Width: 500, Height: 200},
			map[string][2]int{"head-cr-cr4-step-0000100.png": {500, 200}, "head-cr-base.bin.png": {500, 200}}},
		{"ppl, odd size", []string{"compare-ppl.json", "ppl-dmc.json"}, Options{Plots: []string{PlotPPL}, Width: 1001, Height: 151},
			map[string][2]int{"ppl-vs-cr.png": {1001, 151}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files, err := Write(filepath.Join(dir, "plots"), load(t, tc.files...), tc.o)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, f := range files {
				names = append(names, filepath.Base(f))
			}
			for n := range tc.want {
				if !slices.Contains(names, n) {
					t.Errorf("%s not written (wrote %v)", n, names)
				}
			}
			if len(names) != len(tc.want) {
				t.Errorf("wrote %v, want %d files", names, len(tc.want))
			}
			for _, f := range files {
				if wh, ok := tc.want[filepath.Base(f)]; ok {
					decodePNG(t, f, wh[0], wh[1])
				}
			}
		})
	}
}

func TestSeries(t *testing.T) {
	runs := load(t, "compare.json", "compare-ppl.json", "ppl-dmc.json")
	ss := buildSeries(runs, func(r Run) (float64, float64, bool) { return r.PPL, math.NaN(), r.PPL > 0 })
	type key struct{ label, policy string }
	got := map[key]series{}
	for _, s := range ss {
		got[key{s.label, s.policy}] = s
	}
	if len(ss) != 7 {
		t.Fatalf("%d series, want 7 (3 + 3 + 1 model and policy pairs)", len(ss))
	}
	w := got[key{"base.bin", "window"}]
	if w.anchor == nil || w.anchor.x != 1 || w.anchor.y != 4.0 {
		t.Errorf("window of base.bin starts at %+v, want its vanilla point (1, 4)", w.anchor)
	}
	if s := got[key{"ctl", "tova"}]; s.anchor == nil || s.anchor.y != 4.5 {
		t.Errorf("tova of ctl starts at %+v, want its own vanilla (1, 4.5)", s.anchor)
	}
	if d := got[key{"cr4 (step-0000100)", "dmc"}]; d.anchor != nil {
		t.Errorf("the DMC model has no vanilla run, but its line starts at %+v", d.anchor)
	}
	dodge(ss)
	seen := map[float64]bool{}
	for _, s := range ss {
		for _, p := range s.pts {
			if p.x < 0.9 || p.x > 4.4 {
				t.Errorf("%s %s dodged to CR %g", s.label, s.policy, p.x)
			}
			if seen[p.x] {
				t.Errorf("two points still at CR %g after dodging", p.x)
			}
			seen[p.x] = true
		}
	}
}

func TestSlugAndTasks(t *testing.T) {
	for in, want := range map[string]string{"cr4 (step-0008000)": "cr4-step-0008000", "DMC CR 4": "DMC-CR-4", "stories260K.bin": "stories260K.bin", "///": "model"} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
	runs := load(t, "compare.json", "harness-dmc.json")
	if got := Tasks(runs, "acc"); !slices.Equal(got, []string{"piqa", "arc_easy", "lambada_openai"}) {
		t.Errorf("Tasks = %v, want dmc eval's order", got)
	}
	if got := Tasks(runs, "acc_norm"); !slices.Equal(got, []string{"piqa"}) {
		t.Errorf("Tasks(acc_norm) = %v", got)
	}
}

// Tick labels name their values exactly (gonum's own label a tick at 4.35 "4.4").
func TestExactTickLabels(t *testing.T) {
	for _, r := range [][2]float64{{4.3382, 4.9748}, {0, 1}, {0.21, 0.26}, {3.9, 5.1}, {100, 2500}} {
		for _, tk := range (exactTicks{}).Ticks(r[0], r[1]) {
			if tk.Label == "" {
				continue
			}
			v, err := strconv.ParseFloat(tk.Label, 64)
			if err != nil || math.Abs(v-tk.Value) > 1e-9*math.Max(1, math.Abs(tk.Value)) {
				t.Errorf("range %v: tick %v labelled %q", r, tk.Value, tk.Label)
			}
		}
	}
}
