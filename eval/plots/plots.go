package plots

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/dmc-project/dmc/internal/atomicfile"
)

// The plots Write can draw.
const (
	PlotPPL   = "ppl"   // perplexity against real CR
	PlotAcc   = "acc"   // a benchmark metric against real CR, per task
	PlotHeads = "heads" // per-layer × per-head CR of a DMC model
)

// Options say what Write draws.
type Options struct {
	// Plots lists PlotPPL, PlotAcc, PlotHeads. Empty: every plot the runs have data for (the
	// heat map for DMC caches only), and each file must feed one of them. Given: every file
	// must have the data of every plot listed.
	Plots []string
	// Metric is the benchmark metric of the accuracy plots: acc (default), acc_norm.
	Metric string
	// Width and Height are the size of one plot in pixels (default 800 × 600); the accuracy
	// overview has one half-size panel per task.
	Width, Height int
	// Title, when set, is the first line of every plot title (the model family, the data).
	Title string
}

// DPI is the resolution of the PNGs: at 96 dpi a 12-point title is 16 pixels high.
const DPI = 96

func (o Options) withDefaults() Options {
	if o.Metric == "" {
		o.Metric = "acc"
	}
	if o.Width == 0 {
		o.Width = 800
	}
	if o.Height == 0 {
		o.Height = 600
	}
	return o
}

// Write draws the plots of runs into dir (created when missing) and returns the PNG files
// written, in order.
func Write(dir string, runs []Run, o Options) ([]string, error) {
	o = o.withDefaults()
	if len(runs) == 0 {
		return nil, fmt.Errorf("nothing to plot: no results given")
	}
	if o.Width < 200 || o.Height < 150 || o.Width > 10000 || o.Height > 10000 {
		return nil, fmt.Errorf("plot size %d × %d pixels: width must be in [200, 10000] and height in [150, 10000]", o.Width, o.Height)
	}
	want := map[string]bool{}
	for _, p := range o.Plots {
		switch p = strings.TrimSpace(p); p {
		case PlotPPL, PlotAcc, PlotHeads:
			want[p] = true
		case "":
		default:
			return nil, fmt.Errorf("unknown plot %q: the plots are %s, %s and %s", p, PlotPPL, PlotAcc, PlotHeads)
		}
	}
	sel, err := selectRuns(runs, want, o.Metric)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	save := func(name string, f Figure, w, h int) error {
		path := filepath.Join(dir, name)
		if err := SavePNG(path, f, w, h); err != nil {
			return err
		}
		written = append(written, path)
		return nil
	}
	if len(sel.ppl) > 0 {
		p, err := PPLPlot(sel.ppl, o)
		if err != nil {
			return nil, err
		}
		if err := save("ppl-vs-cr.png", p, o.Width, o.Height); err != nil {
			return nil, err
		}
	}
	if len(sel.acc) > 0 {
		base := o.Metric + "-vs-cr"
		grid, cols, rows, err := AccuracyOverview(sel.acc, o)
		if err != nil {
			return nil, err
		}
		if err := save(base+".png", grid, cols*o.Width/2, rows*o.Height/2); err != nil {
			return nil, err
		}
		for _, task := range Tasks(sel.acc, o.Metric) {
			p, err := AccuracyPlot(sel.acc, task, o)
			if err != nil {
				return nil, err
			}
			if err := save(base+"-"+slug(task)+".png", p, o.Width, o.Height); err != nil {
				return nil, err
			}
		}
	}
	names := map[string]int{}
	for _, r := range sel.heads {
		f, err := HeadCRFigure(r, o)
		if err != nil {
			return nil, err
		}
		name := "head-cr.png"
		if len(sel.heads) > 1 {
			s := slug(r.Label)
			if names[s]++; names[s] > 1 {
				s = fmt.Sprintf("%s-%d", s, names[s])
			}
			name = "head-cr-" + s + ".png"
		}
		if err := save(name, f, o.Width, o.Height); err != nil {
			return nil, err
		}
	}
	return written, nil
}

// selection is what each plot draws.
type selection struct{ ppl, acc, heads []Run }

// selectRuns picks the runs of each plot and refuses files without the data asked for.
func selectRuns(runs []Run, want map[string]bool, metric string) (selection, error) {
	auto := len(want) == 0
	var s selection
	var files []string
	has := map[string]map[string]bool{} // file → plot → has data
	for _, r := range runs {
		if has[r.File] == nil {
			has[r.File] = map[string]bool{}
			files = append(files, r.File)
		}
		if r.PPL > 0 && r.CR > 0 {
			has[r.File][PlotPPL] = true
			if auto || want[PlotPPL] {
				s.ppl = append(s.ppl, r)
			}
		}
		if r.hasMetric(metric) {
			if auto || want[PlotAcc] {
				if r.CR == 0 {
					return s, fmt.Errorf("file %s: the %s cache has benchmark scores but no real CR; run dmc eval with --tasks ppl,TASKS and --data HELDOUT so that the CR is measured with the same cache", r.File, r.Policy)
				}
				s.acc = append(s.acc, r)
			}
			has[r.File][PlotAcc] = true
		}
		if r.PerHeadCR != nil && (!auto || r.Policy == "dmc") {
			has[r.File][PlotHeads] = true
			if auto || want[PlotHeads] {
				s.heads = append(s.heads, r)
			}
		}
	}
	for _, f := range files {
		if auto {
			if len(has[f]) == 0 {
				return s, fmt.Errorf("file %s has nothing to plot: no perplexity with a real CR (dmc eval --tasks ppl --data HELDOUT), no benchmark %q scores with a real CR (dmc eval --tasks ppl,TASKS --data HELDOUT --data-dir DIR) and no per-head CR of a DMC cache (dmc eval --model DMC_RUN --tasks ppl --data HELDOUT)", f, metric)
			}
			continue
		}
		for _, p := range []string{PlotPPL, PlotAcc, PlotHeads} {
			if want[p] && !has[f][p] {
				return s, missing(f, p, metric)
			}
		}
	}
	return s, nil
}

// missing says which data a file lacks and how dmc eval produces it.
func missing(file, p, metric string) error {
	switch p {
	case PlotPPL:
		return fmt.Errorf("file %s has no perplexity with a real CR; run dmc eval with --tasks ppl --data HELDOUT --json FILE (add --compare vanilla,window,streaming,h2o,tova --cr CR for the training-free caches) to produce it", file)
	case PlotAcc:
		return fmt.Errorf("file %s has no benchmark %q scores (results.TASK.\"%s,none\"); run dmc eval with --tasks ppl,piqa,hellaswag,… --data HELDOUT --data-dir DIR --json FILE to produce them", file, metric, metric)
	default:
		return fmt.Errorf("file %s has no per-head CR; run dmc eval --model DMC_RUN --tasks ppl --data HELDOUT --json FILE to produce it (with benchmarks in --tasks, --json holds lm-eval's results, which have no per-head CR)", file)
	}
}

func (r Run) hasMetric(metric string) bool {
	for _, m := range r.Tasks {
		if _, ok := m[metric]; ok {
			return true
		}
	}
	return false
}

// Figure is anything that draws itself on a canvas: a *plot.Plot or one of the composite
// figures of this package.
type Figure interface {
	Draw(c draw.Canvas)
}

// RenderPNG draws f on a white width × height-pixel image and writes it as PNG.
func RenderPNG(w io.Writer, f Figure, width, height int) error {
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	c := vgimg.NewWith(vgimg.UseImage(img), vgimg.UseDPI(DPI))
	f.Draw(draw.New(c))
	_, err := vgimg.PngCanvas{Canvas: c}.WriteTo(w)
	return err
}

// SavePNG renders f into path atomically.
func SavePNG(path string, f Figure, width, height int) error {
	var b bytes.Buffer
	if err := RenderPNG(&b, f, width, height); err != nil {
		return err
	}
	return atomicfile.Write(path, b.Bytes())
}

// PPLPlot is held-out perplexity against real CR.
func PPLPlot(runs []Run, o Options) (Figure, error) {
	o = o.withDefaults()
	st := newStyler(runs)
	ss := buildSeries(runs, func(r Run) (float64, float64, bool) { return r.PPL, math.NaN(), r.PPL > 0 && r.CR > 0 })
	if len(ss) == 0 {
		return nil, fmt.Errorf("no run has a perplexity with a real CR")
	}
	p := plot.New()
	p.Y.Tick.Marker = exactTicks{}
	p.Title.Text = title(o.Title, "held-out perplexity vs real compression rate")
	p.Y.Label.Text = "perplexity (lower is better)"
	if err := st.draw(p, ss); err != nil {
		return nil, err
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, pt := range s.pts {
			lo, hi = min(lo, pt.y), max(hi, pt.y)
		}
	}
	pad := max((hi-lo)*0.06, hi*0.005)
	p.Y.Min, p.Y.Max = lo-pad, hi+pad
	return withLegend(p, st.legend(ss)), nil
}

// AccuracyPlot is o.Metric of one task against real CR, with ±1 standard-error bars.
func AccuracyPlot(runs []Run, task string, o Options) (Figure, error) {
	o = o.withDefaults()
	p, ss, st, err := accuracyPanel(runs, task, o)
	if err != nil {
		return nil, err
	}
	p.Title.Text = title(o.Title, fmt.Sprintf("%s: %s vs real compression rate (±1 s.e.)", task, o.Metric))
	p.Y.Label.Text = o.Metric
	return withLegend(p, st.legend(ss)), nil
}

// AccuracyOverview is one panel per task and one legend; cols × rows panels of half the
// plot size each.
func AccuracyOverview(runs []Run, o Options) (f Figure, cols, rows int, err error) {
	o = o.withDefaults()
	tasks := Tasks(runs, o.Metric)
	if len(tasks) == 0 {
		return nil, 0, 0, fmt.Errorf("no run has %q scores", o.Metric)
	}
	cols = int(math.Ceil(math.Sqrt(float64(len(tasks)))))
	rows = (len(tasks) + cols - 1) / cols
	g := &grid{title: title(o.Title, fmt.Sprintf("%s vs real compression rate per benchmark (±1 s.e.)", o.Metric))}
	var all []series
	var st *styler
	for r := range rows {
		var row []*plot.Plot
		for c := range cols {
			i := r*cols + c
			if i >= len(tasks) {
				row = append(row, nil)
				continue
			}
			p, ss, s, err := accuracyPanel(runs, tasks[i], o)
			if err != nil {
				return nil, 0, 0, err
			}
			p.Title.Text = tasks[i]
			p.X.Label.Text = "real CR"
			row = append(row, p)
			all = append(all, ss...)
			st = s
		}
		g.plots = append(g.plots, row)
	}
	g.legend = st.legend(all)
	return g, cols, rows, nil
}

func accuracyPanel(runs []Run, task string, o Options) (*plot.Plot, []series, *styler, error) {
	st := newStyler(runs)
	ss := buildSeries(runs, func(r Run) (float64, float64, bool) {
		s, ok := r.Tasks[task][o.Metric]
		return s.Value, s.Stderr, ok && r.CR > 0
	})
	if len(ss) == 0 {
		return nil, nil, nil, fmt.Errorf("no run has %s %q with a real CR", task, o.Metric)
	}
	dodge(ss)
	p := plot.New()
	p.Y.Tick.Marker = exactTicks{}
	if err := st.draw(p, ss); err != nil {
		return nil, nil, nil, err
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, pt := range s.pts {
			e := pt.err
			if math.IsNaN(e) {
				e = 0
			}
			lo, hi = min(lo, pt.y-e), max(hi, pt.y+e)
		}
	}
	pad := max((hi-lo)*0.08, 0.02)
	p.Y.Min, p.Y.Max = lo-pad, hi+pad
	if lo >= 0 && hi <= 1 {
		p.Y.Min, p.Y.Max = max(p.Y.Min, 0), min(p.Y.Max, 1)
	}
	return p, ss, st, nil
}

func title(prefix, s string) string {
	if prefix == "" {
		return s
	}
	return prefix + "\n" + s
}

// point is one run on a plot; err is its standard error (NaN: none).
type point struct{ x, y, err float64 }

// series is one model with one cache policy.
type series struct {
	label, policy string
	pts           []point
	anchor        *point // the same model's vanilla point: the line starts there
}

// buildSeries groups runs by model and policy, in the order they come, points by CR.
func buildSeries(runs []Run, value func(Run) (y, err float64, ok bool)) []series {
	var out []series
	idx := map[[2]string]int{}
	for _, r := range runs {
		y, e, ok := value(r)
		if !ok {
			continue
		}
		k := [2]string{r.Label, r.Policy}
		i, seen := idx[k]
		if !seen {
			i = len(out)
			idx[k] = i
			out = append(out, series{label: r.Label, policy: r.Policy})
		}
		out[i].pts = append(out[i].pts, point{x: r.CR, y: y, err: e})
	}
	for i := range out {
		sort.SliceStable(out[i].pts, func(a, b int) bool { return out[i].pts[a].x < out[i].pts[b].x })
	}
	for i := range out {
		if out[i].policy == "vanilla" {
			continue
		}
		if j, ok := idx[[2]string{out[i].label, "vanilla"}]; ok && out[j].pts[0].x < out[i].pts[0].x {
			a := out[j].pts[0]
			out[i].anchor = &a
		}
	}
	return out
}

// dodge moves points that share a CR apart (3% of the CR per step, ±8% at most) so that
// their markers and error bars do not hide each other. Anchors move with their points.
func dodge(ss []series) {
	type ref struct{ s, p int }
	groups := map[string][]ref{}
	var keys []string
	for i, s := range ss {
		for j, pt := range s.pts {
			k := fmt.Sprintf("%.4g", pt.x)
			if groups[k] == nil {
				keys = append(keys, k)
			}
			groups[k] = append(groups[k], ref{i, j})
		}
	}
	for _, k := range keys {
		g := groups[k]
		n := len(g)
		if n < 2 {
			continue
		}
		d := min(0.03, 0.16/float64(n-1))
		for i, r := range g {
			ss[r.s].pts[r.p].x *= 1 + d*(float64(i)-float64(n-1)/2)
		}
	}
	// Anchors are copies of vanilla points: take the moved ones.
	for i := range ss {
		if ss[i].anchor == nil {
			continue
		}
		for _, v := range ss {
			if v.label == ss[i].label && v.policy == "vanilla" {
				a := v.pts[0]
				ss[i].anchor = &a
			}
		}
	}
}

// styler gives each policy a colour and each model a marker and a line style.
type styler struct {
	policies []string
	labels   []string
}

var policyOrder = []string{"vanilla", "dmc", "window", "streaming", "h2o", "tova"}

var policyColors = map[string]color.Color{
	"vanilla":   color.RGBA{0, 0, 0, 255},
	"dmc":       color.RGBA{214, 39, 40, 255},
	"window":    color.RGBA{31, 119, 180, 255},
	"streaming": color.RGBA{44, 160, 44, 255},
	"h2o":       color.RGBA{255, 127, 14, 255},
	"tova":      color.RGBA{148, 103, 189, 255},
}

var extraColors = []color.Color{color.RGBA{140, 86, 75, 255}, color.RGBA{227, 119, 194, 255},
	color.RGBA{127, 127, 127, 255}, color.RGBA{188, 189, 34, 255}, color.RGBA{23, 190, 207, 255}}

var glyphs = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.BoxGlyph{}, draw.PyramidGlyph{}, draw.RingGlyph{},
	draw.SquareGlyph{}, draw.TriangleGlyph{}, draw.CrossGlyph{}, draw.PlusGlyph{}}

var dashes = [][]vg.Length{nil, {vg.Points(6), vg.Points(3)}, {vg.Points(2), vg.Points(2)},
	{vg.Points(6), vg.Points(2), vg.Points(2), vg.Points(2)}}

func newStyler(runs []Run) *styler {
	st := &styler{}
	var others []string
	for _, r := range runs {
		if !slices.Contains(st.labels, r.Label) {
			st.labels = append(st.labels, r.Label)
		}
		if !slices.Contains(policyOrder, r.Policy) && !slices.Contains(others, r.Policy) {
			others = append(others, r.Policy)
		}
	}
	sort.Strings(others)
	for _, p := range policyOrder {
		for _, r := range runs {
			if r.Policy == p {
				st.policies = append(st.policies, p)
				break
			}
		}
	}
	st.policies = append(st.policies, others...)
	return st
}

func (st *styler) color(policy string) color.Color {
	if c, ok := policyColors[policy]; ok {
		return c
	}
	i := slices.Index(st.policies, policy) - len(policyColors)
	return extraColors[((i%len(extraColors))+len(extraColors))%len(extraColors)]
}

func (st *styler) model(label string) int { return max(slices.Index(st.labels, label), 0) }

// draw adds lines, markers and error bars, and sets the CR axis.
func (st *styler) draw(p *plot.Plot, ss []series) error {
	xmin, xmax := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		col, m := st.color(s.policy), st.model(s.label)
		var xys plotter.XYs
		if s.anchor != nil {
			xys = append(xys, plotter.XY{X: s.anchor.x, Y: s.anchor.y})
		}
		var pts plotter.XYs
		var errs plotter.YErrors
		var errPts plotter.XYs
		for _, pt := range s.pts {
			xys = append(xys, plotter.XY{X: pt.x, Y: pt.y})
			pts = append(pts, plotter.XY{X: pt.x, Y: pt.y})
			xmin, xmax = min(xmin, pt.x), max(xmax, pt.x)
			if !math.IsNaN(pt.err) && pt.err > 0 {
				errPts = append(errPts, plotter.XY{X: pt.x, Y: pt.y})
				errs = append(errs, struct{ Low, High float64 }{pt.err, pt.err})
			}
		}
		if len(xys) > 1 {
			l, err := plotter.NewLine(xys)
			if err != nil {
				return err
			}
			l.Color, l.Width, l.Dashes = col, vg.Points(1.5), dashes[m%len(dashes)]
			p.Add(l)
		}
		if len(errPts) > 0 {
			eb, err := plotter.NewYErrorBars(errorXYs{errPts, errs})
			if err != nil {
				return err
			}
			eb.Color, eb.Width = col, vg.Points(1)
			p.Add(eb)
		}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return err
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: col, Radius: vg.Points(4), Shape: glyphs[m%len(glyphs)]}
		p.Add(sc)
	}
	p.X.Label.Text = "real compression rate (tokens / KV slots, log scale)"
	p.X.Scale = plot.LogScale{}
	p.X.Min, p.X.Max = xmin/1.12, xmax*1.12
	p.X.Tick.Marker = crTicks{}
	p.Add(plotter.NewGrid())
	return nil
}

type errorXYs struct {
	plotter.XYs
	plotter.YErrors
}

// legend has one entry per policy (its colour) and, with several models, one per model (its
// marker and line style in grey).
func (st *styler) legend(ss []series) plot.Legend {
	l := plot.NewLegend()
	l.Top, l.Left = true, true
	l.ThumbnailWidth = vg.Points(24)
	present := map[string]bool{}
	for _, s := range ss {
		present[s.policy] = true
	}
	entry := func(name string, col color.Color, m int) {
		ln, _ := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}})
		ln.Color, ln.Width, ln.Dashes = col, vg.Points(1.5), dashes[m%len(dashes)]
		sc, _ := plotter.NewScatter(plotter.XYs{{X: 0, Y: 0}})
		sc.GlyphStyle = draw.GlyphStyle{Color: col, Radius: vg.Points(4), Shape: glyphs[m%len(glyphs)]}
		l.Add(name, ln, sc)
	}
	for _, p := range st.policies {
		if !present[p] {
			continue
		}
		name := p
		if p == "vanilla" {
			name = "vanilla (full cache)"
		}
		entry(name, st.color(p), 0)
	}
	if len(st.labels) > 1 {
		for i, lab := range st.labels {
			entry("model: "+lab, color.Gray{110}, i)
		}
	}
	return l
}

// crTicks marks 1, 1.5, 2, 3, 4, 6, 8, … and labels the powers of two (all of them on a
// range of three octaves or less).
type crTicks struct{}

func (crTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	few := hi/lo <= 8
	for v := 1.0; v <= hi*2; v *= 2 {
		for _, x := range []float64{v, 1.5 * v} {
			if x < lo || x > hi {
				continue
			}
			t := plot.Tick{Value: x}
			if x == v || few {
				t.Label = fmt.Sprintf("%g", x)
			}
			ts = append(ts, t)
		}
	}
	if len(ts) < 2 {
		return plot.DefaultTicks{}.Ticks(lo, hi)
	}
	return ts
}

// exactTicks are gonum's default ticks with labels that name their values exactly: gonum
// formats them with the precision of the step, so a tick at 4.35 with a step of 0.2 reads
// "4.4", and every point looks 0.05 off.
type exactTicks struct{}

func (exactTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	prec := 0
	for _, t := range ts {
		if t.Label == "" {
			continue
		}
		for prec < 6 {
			r, _ := strconv.ParseFloat(strconv.FormatFloat(t.Value, 'f', prec, 64), 64)
			if math.Abs(r-t.Value) <= 1e-9*max(1, math.Abs(t.Value)) {
				break
			}
			prec++
		}
	}
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'f', prec, 64)
		}
	}
	return ts
}

// withLegend puts the legend in a strip right of the plot.
func withLegend(p *plot.Plot, l plot.Legend) Figure { return &legendFigure{p: p, l: l} }

type legendFigure struct {
	p *plot.Plot
	l plot.Legend
}

func (f *legendFigure) Draw(c draw.Canvas) {
	left, right := splitLegend(margin(c), &f.l)
	f.p.Draw(left)
	f.l.Draw(right)
}

// splitLegend divides c into the plot's part and the legend's strip on the right.
func splitLegend(c draw.Canvas, l *plot.Legend) (plotC, legendC draw.Canvas) {
	gap := vg.Points(8)
	w := l.Rectangle(c).Size().X + 2*gap
	w = min(w, (c.Max.X-c.Min.X)/2)
	plotC = draw.Crop(c, 0, -w, 0, 0)
	legendC = draw.Crop(c, c.Max.X-c.Min.X-w+gap, -gap, 0, -3*gap)
	return plotC, legendC
}

// margin keeps titles and tick labels off the image's edges.
func margin(c draw.Canvas) draw.Canvas {
	return draw.Crop(c, vg.Points(4), -vg.Points(6), vg.Points(4), -vg.Points(6))
}

// grid is the accuracy overview: panels aligned on one canvas, a title and a legend.
type grid struct {
	title  string
	plots  [][]*plot.Plot
	legend plot.Legend
}

func (g *grid) Draw(c draw.Canvas) {
	c = margin(c)
	sty := plot.New().Title.TextStyle
	sty.Font.Size = vg.Points(14)
	top := sty.Height(g.title) + vg.Points(10)
	c.FillText(sty, vg.Point{X: (c.Min.X + c.Max.X) / 2, Y: c.Max.Y - vg.Points(5)}, g.title)
	body := draw.Crop(c, 0, 0, 0, -top)
	panels, legendC := splitLegend(body, &g.legend)
	tiles := draw.Tiles{Rows: len(g.plots), Cols: len(g.plots[0]), PadX: vg.Points(6), PadY: vg.Points(6),
		PadTop: vg.Points(2), PadBottom: vg.Points(2), PadLeft: vg.Points(2), PadRight: vg.Points(2)}
	cs := plot.Align(g.plots, tiles, panels)
	for j, row := range g.plots {
		for i, p := range row {
			if p != nil {
				p.Draw(cs[j][i])
			}
		}
	}
	g.legend.Draw(legendC)
}

// slug makes a file-name part of a label: letters, digits, '.', '-' and '_' kept, runs of
// anything else turned into one '-'.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range s {
		ok := r == '.' || r == '-' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		switch {
		case ok:
			b.WriteRune(r)
			dash = false
		case !dash && b.Len() > 0:
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.Trim(b.String(), "-.")
	if out == "" {
		return "model"
	}
	return out
}
