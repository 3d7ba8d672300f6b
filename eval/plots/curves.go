package plots

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// CurvesFile is the PNG WriteCurves draws.
const CurvesFile = "training-curves.png"

// Curve is one training run's metrics.jsonl (trainer.Metrics lines): the language-model loss
// and the achieved compression rate against the tokens trained on.
type Curve struct {
	File, Label string
	Tokens      []float64 // cumulative training tokens after each logged step
	Loss        []float64 // lm_loss
	CR          []float64 // achieved_cr (NaN where the run had none: control runs, stage 1)
}

// IsCurve says whether path names a run's metrics file (.jsonl) rather than a results JSON.
func IsCurve(path string) bool { return strings.HasSuffix(strings.ToLower(path), ".jsonl") }

// LoadCurve reads a metrics.jsonl; the label defaults to the run directory's name (or the
// file's, less metrics-).
func LoadCurve(in Input) (Curve, error) {
	f, err := os.Open(in.Path)
	if err != nil {
		return Curve{}, err
	}
	defer f.Close()
	c := Curve{File: in.Path, Label: in.Label}
	if c.Label == "" {
		base := strings.TrimSuffix(filepath.Base(in.Path), filepath.Ext(in.Path))
		if base == "metrics" {
			base = filepath.Base(filepath.Dir(in.Path))
		}
		c.Label = strings.TrimPrefix(base, "metrics-")
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var total float64
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var m struct {
			Step   *int     `json:"step"`
			Tokens float64  `json:"tokens"`
			LM     *float64 `json:"lm_loss"`
			CR     *float64 `json:"achieved_cr"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			return Curve{}, fmt.Errorf("%s line %d: %v (a metrics.jsonl of dmc retrofit has one JSON object per line)", in.Path, n, err)
		}
		if m.Step == nil || m.LM == nil {
			return Curve{}, fmt.Errorf("%s line %d has no step or lm_loss: it is not a metrics.jsonl of dmc retrofit", in.Path, n)
		}
		total += m.Tokens
		cr := math.NaN()
		if m.CR != nil {
			cr = *m.CR
		}
		c.Tokens, c.Loss, c.CR = append(c.Tokens, total), append(c.Loss, *m.LM), append(c.CR, cr)
	}
	if err := sc.Err(); err != nil {
		return Curve{}, fmt.Errorf("%s: %w", in.Path, err)
	}
	if len(c.Loss) == 0 {
		return Curve{}, fmt.Errorf("%s has no metrics lines", in.Path)
	}
	return c, nil
}

// CurvesFigure draws the LM loss (left) and the achieved compression rate (right) of every
// curve against training tokens (millions), one colour per run; the loss is smoothed over
// windows of smooth points (≤ 1: raw).
func CurvesFigure(cs []Curve, o Options, smooth int) (Figure, error) {
	o = o.withDefaults()
	if len(cs) == 0 {
		return nil, fmt.Errorf("no training curves to draw")
	}
	loss, cr := plot.New(), plot.New()
	loss.Y.Tick.Marker, cr.Y.Tick.Marker = exactTicks{}, exactTicks{}
	loss.Title.Text = title(o.Title, "training loss (LM cross-entropy)")
	loss.X.Label.Text, loss.Y.Label.Text = "training tokens (M)", "loss"
	cr.Title.Text = title(o.Title, "achieved compression rate")
	cr.X.Label.Text, cr.Y.Label.Text = "training tokens (M)", "CR (tokens / slots)"
	legend := plot.NewLegend()
	anyCR := false
	for i, c := range cs {
		col := curveColor(i)
		lp, cp := plotter.XYs{}, plotter.XYs{}
		for j := range c.Loss {
			lo, hi := max(0, j-smooth/2), min(len(c.Loss), j+smooth/2+1)
			if smooth <= 1 {
				lo, hi = j, j+1
			}
			var s float64
			for _, v := range c.Loss[lo:hi] {
				s += v
			}
			lp = append(lp, plotter.XY{X: c.Tokens[j] / 1e6, Y: s / float64(hi-lo)})
			if v := c.CR[j]; v == v {
				cp = append(cp, plotter.XY{X: c.Tokens[j] / 1e6, Y: v})
			}
		}
		l, err := plotter.NewLine(lp)
		if err != nil {
			return nil, err
		}
		l.Color, l.Width = col, vg.Points(1.2)
		loss.Add(l)
		legend.Add(c.Label, l)
		if len(cp) > 0 {
			anyCR = true
			lc, err := plotter.NewLine(cp)
			if err != nil {
				return nil, err
			}
			lc.Color, lc.Width = col, vg.Points(1.2)
			cr.Add(lc)
		}
	}
	loss.Add(plotter.NewGrid())
	cr.Add(plotter.NewGrid())
	if !anyCR {
		return withLegend(loss, legend), nil
	}
	return &grid{title: title(o.Title, "training curves"), plots: [][]*plot.Plot{{loss, cr}}, legend: legend}, nil
}

func curveColor(i int) color.Color {
	all := append([]color.Color{policyColors["vanilla"], policyColors["dmc"], policyColors["window"], policyColors["streaming"],
		policyColors["h2o"], policyColors["tova"]}, extraColors...)
	return all[i%len(all)]
}

// WriteCurves draws CurvesFigure into dir/CurvesFile (twice the width of one plot when there
// are compression curves; the loss smoothed over 1/60 of the longest run) and returns the
// file written.
func WriteCurves(dir string, cs []Curve, o Options) (string, error) {
	o = o.withDefaults()
	n := 0
	for _, c := range cs {
		n = max(n, len(c.Loss))
	}
	f, err := CurvesFigure(cs, o, max(1, n/60))
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	w := o.Width
	if _, two := f.(*grid); two {
		w *= 2
	}
	path := filepath.Join(dir, CurvesFile)
	return path, SavePNG(path, f, w, o.Height)
}
