package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/eval/plots"
)

// EvalPlotOptions are the flags of `dmc eval plot`.
type EvalPlotOptions struct {
	Out           string
	Plots         string
	Metric        string
	Title         string
	Width, Height int
}

func newEvalPlotCmd(streams *IO) *cobra.Command {
	o := &EvalPlotOptions{}
	cmd := &cobra.Command{
		Use:   "plot --out DIR [flags] [LABEL=]FILE.json...",
		Short: "PNG plots of dmc eval results: perplexity and accuracy against real CR, per-head CR heat map",
		Long: `Reads results JSONs of dmc eval --json (a --compare file, a benchmark file in
lm-evaluation-harness's shape, or a --tasks ppl report) and writes PNGs into --out:
  ppl-vs-cr.png          held-out perplexity against the real CR, one colour per cache policy,
                         one marker per model; each policy's line starts at the model's vanilla
  acc-vs-cr.png          every benchmark's --metric against the real CR (one panel per task),
  acc-vs-cr-TASK.png     and one file per task, with ±1 standard-error bars
  head-cr.png            the real CR of each layer × KV head of a DMC model (log colour scale);
                         head-cr-LABEL.png when several files have one
  training-curves.png    from runs' metrics.jsonl files (dmc retrofit): the LM loss and the
                         achieved CR against training tokens, one colour per run
LABEL= names the model in the legends (default: the model path's last element). Without
--plots, every plot the files have data for is drawn (the heat map for DMC caches only).`,
		Example: `  dmc eval plot --out plots/ cmp.json cr4.json
  dmc eval plot --out plots/ --plots ppl original=cmp-original.json control=cmp-control.json "DMC CR 4=cr4-ppl.json"
  dmc eval plot --out plots/ --plots heads eval-cr4.json
  dmc eval plot --out plots/ control=runs/control/metrics.jsonl "CR 4=runs/cr4/metrics.jsonl"`,
		RunE: func(cmd *cobra.Command, args []string) error { return o.Run(streams, args) },
	}
	f := cmd.Flags()
	f.StringVar(&o.Out, "out", "", "folder for the PNGs (created when missing; required)")
	f.StringVar(&o.Plots, "plots", "", "comma-separated: ppl, acc, heads (default: every plot the files have data for; given, every file must have their data)")
	f.StringVar(&o.Metric, "metric", "acc", "benchmark metric of the accuracy plots: acc or acc_norm")
	f.StringVar(&o.Title, "title", "", "first line of every plot title (the model family, the data)")
	f.IntVar(&o.Width, "width", 800, "width of one plot in pixels")
	f.IntVar(&o.Height, "height", 600, "height of one plot in pixels")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// Run loads the files and writes the plots, printing each file written.
func (o *EvalPlotOptions) Run(streams *IO, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("dmc eval plot needs one or more results JSONs (written by dmc eval --json)")
	}
	if err := firstErr(checkInt("width", o.Width, 200, "≥ 200 pixels"), checkInt("height", o.Height, 150, "≥ 150 pixels")); err != nil {
		return err
	}
	if o.Metric == "" {
		return fmt.Errorf("--metric is empty: give acc or acc_norm")
	}
	var inputs []plots.Input
	var curves []plots.Curve
	for _, a := range args {
		in := plots.ParseInput(a)
		if !plots.IsCurve(in.Path) {
			inputs = append(inputs, in)
			continue
		}
		c, err := plots.LoadCurve(in)
		if err != nil {
			return err
		}
		curves = append(curves, c)
	}
	var which []string
	if o.Plots != "" {
		which = strings.Split(o.Plots, ",")
	}
	opts := plots.Options{Plots: which, Metric: o.Metric, Title: o.Title, Width: o.Width, Height: o.Height}
	var files []string
	if len(inputs) > 0 || len(curves) == 0 {
		runs, err := plots.LoadAll(inputs)
		if err != nil {
			return err
		}
		if files, err = plots.Write(o.Out, runs, opts); err != nil {
			return err
		}
	}
	if len(curves) > 0 {
		f, err := plots.WriteCurves(o.Out, curves, opts)
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	for _, f := range files {
		fmt.Fprintln(streams.Out, f)
	}
	return nil
}
