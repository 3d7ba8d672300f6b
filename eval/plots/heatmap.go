package plots

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/palette"
	"gonum.org/v1/plot/palette/moreland"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// HeadCRFigure is the heat map of r.PerHeadCR: KV heads on x, layers on y (layer 0 at the
// top, as dmc eval prints them), colour = log₂ CR with a colour bar labelled in CR, and each
// cell's CR written in it when the table is small enough to read (≤ 16 heads, ≤ 48 layers).
func HeadCRFigure(r Run, o Options) (Figure, error) {
	o = o.withDefaults()
	if len(r.PerHeadCR) == 0 || len(r.PerHeadCR[0]) == 0 {
		return nil, fmt.Errorf("file %s has no per-head CR", r.File)
	}
	g := crGrid(r.PerHeadCR)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, hs := range g {
		for _, c := range hs {
			lo, hi = min(lo, c), max(hi, c)
		}
	}
	zlo, zhi := math.Log2(lo), math.Log2(hi)
	if zhi-zlo < 0.5 { // a uniform cache: centre the colours on it
		zlo, zhi = (zlo+zhi)/2-0.25, (zlo+zhi)/2+0.25
	}
	cm := moreland.Kindlmann()
	cm.SetMin(zlo)
	cm.SetMax(zhi)
	hm := plotter.NewHeatMap(g, cm.Palette(256))
	hm.Min, hm.Max = zlo, zhi

	layers, heads := len(g), len(g[0])
	p := plot.New()
	what := r.Label
	if r.CR > 0 {
		what = fmt.Sprintf("%s, %s cache, overall %.2f×", r.Label, r.Policy, r.CR)
	}
	p.Title.Text = title(o.Title, "real CR per layer × KV head: "+what)
	p.X.Label.Text = "KV head"
	p.Y.Label.Text = "layer"
	p.X.Padding, p.Y.Padding = 0, 0
	p.X.Tick.Marker = indexTicks(heads)
	p.Y.Tick.Marker = indexTicks(layers)
	p.Y.Scale = plot.InvertedScale{Normalizer: plot.LinearScale{}}
	p.Add(hm)
	p.X.Min, p.X.Max = -0.5, float64(heads)-0.5
	p.Y.Min, p.Y.Max = -0.5, float64(layers)-0.5
	if heads <= 16 && layers <= 48 {
		labels, err := cellLabels(g, cm, o)
		if err != nil {
			return nil, err
		}
		p.Add(labels)
	}

	bar := plot.New()
	cb := &plotter.ColorBar{ColorMap: cm, Vertical: true}
	bar.Add(cb)
	bar.HideX()
	bar.X.Padding, bar.Y.Padding = 0, 0
	bar.Y.Label.Text = "CR (log scale)"
	bar.Y.Tick.Marker = log2Ticks{}
	return &heatFigure{p: p, bar: bar}, nil
}

// crGrid is the per-head CR as gonum's GridXYZ: column = head, row = layer, Z = log₂ CR.
type crGrid [][]float64

func (g crGrid) Dims() (c, r int)   { return len(g[0]), len(g) }
func (g crGrid) Z(c, r int) float64 { return math.Log2(g[r][c]) }
func (g crGrid) X(c int) float64    { return float64(c) }
func (g crGrid) Y(r int) float64    { return float64(r) }

// cellLabels writes each CR in its cell, white on dark colours and black on light ones.
func cellLabels(g crGrid, cm palette.ColorMap, o Options) (*plotter.Labels, error) {
	var xys plotter.XYLabels
	var styles []text.Style
	size := vg.Points(11)
	if len(g[0]) > 8 || len(g) > 16 {
		size = vg.Points(8)
	}
	for l, hs := range g {
		for h, c := range hs {
			xys.XYs = append(xys.XYs, plotter.XY{X: float64(h), Y: float64(l)})
			xys.Labels = append(xys.Labels, crLabel(c))
			col := color.Color(color.Black)
			if bg, err := cm.At(math.Min(math.Max(math.Log2(c), cm.Min()), cm.Max())); err == nil && luminance(bg) < 0.45 {
				col = color.White
			}
			styles = append(styles, text.Style{Color: col, Font: font.From(plotter.DefaultFont, size),
				XAlign: draw.XCenter, YAlign: draw.YCenter, Handler: plot.DefaultTextHandler})
		}
	}
	labels, err := plotter.NewLabels(xys)
	if err != nil {
		return nil, err
	}
	labels.TextStyle = styles
	return labels, nil
}

func crLabel(c float64) string {
	switch {
	case c >= 100:
		return fmt.Sprintf("%.0f", c)
	case c >= 10:
		return fmt.Sprintf("%.1f", c)
	default:
		return fmt.Sprintf("%.2f", c)
	}
}

// luminance is the relative luminance of c in [0, 1] (sRGB, not linearised: enough to pick
// black or white text).
func luminance(c color.Color) float64 {
	r, g, b, _ := c.RGBA()
	return (0.2126*float64(r) + 0.7152*float64(g) + 0.0722*float64(b)) / 0xffff
}

// indexTicks labels 0 … n-1, every k-th one when there are more than 16.
func indexTicks(n int) plot.ConstantTicks {
	k := (n + 15) / 16
	var ts plot.ConstantTicks
	for i := range n {
		t := plot.Tick{Value: float64(i)}
		if i%k == 0 {
			t.Label = fmt.Sprint(i)
		}
		ts = append(ts, t)
	}
	return ts
}

// log2Ticks marks a log₂ axis at the powers of two (labelled with the CR, not its log), and
// also at both ends when fewer than two powers fall inside.
type log2Ticks struct{}

func (log2Ticks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Ceil(lo); e <= hi; e++ {
		ts = append(ts, plot.Tick{Value: e, Label: fmt.Sprintf("%g", math.Exp2(e))})
	}
	if len(ts) < 2 {
		end := func(z float64) plot.Tick { return plot.Tick{Value: z, Label: fmt.Sprintf("%.3g", math.Exp2(z))} }
		ts = append(append([]plot.Tick{end(lo)}, ts...), end(hi))
	}
	return ts
}

// heatFigure is the heat map with its colour bar on the right, the bar as tall as the map.
type heatFigure struct {
	p, bar *plot.Plot
}

func (f *heatFigure) Draw(c draw.Canvas) {
	c = margin(c)
	barW := vg.Points(80)
	left := draw.Crop(c, 0, -barW, 0, 0)
	f.p.Draw(left)
	dc := f.p.DataCanvas(left)
	gap := vg.Points(14)
	bc := draw.Canvas{Canvas: c.Canvas, Rectangle: vg.Rectangle{
		Min: vg.Point{X: c.Max.X - barW + gap, Y: dc.Min.Y},
		Max: vg.Point{X: c.Max.X - gap/2, Y: dc.Max.Y},
	}}
	f.bar.Draw(bc)
}
