package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/retrofit"
)

// BenchDecodeOptions are the flags of `dmc bench decode`.
type BenchDecodeOptions struct {
	Model         string
	RandomWeights bool
	CR            string
	Batch         string
	Prompt        int
	Gen           int
	JSON          string
	Seed          uint64
	Device        int
	BandwidthGiB  float64
}

func init() { register(newBenchCmd) }

func newBenchCmd(streams *IO) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the CUDA inference engine (decode throughput, memory, roofline)",
		Args:  cobra.NoArgs,
	}
	o := &BenchDecodeOptions{}
	dec := &cobra.Command{
		Use:   "decode",
		Short: "Decode throughput of the CUDA engine, vanilla and DMC, at given batch sizes",
		Long: `Runs prefill then --gen greedy decode steps for each compression setting and batch size, and
reports tokens/s, ms per step, GPU memory, the largest batch that fits, and the fraction of the HBM
roofline: (weight bytes + KV bytes read per step) / measured device copy bandwidth.

--cr takes a list of: 1 or vanilla (the unmodified model), dmc (the model's learned DMC
decisions), or an integer N > 1: DMC with the merge pattern FORCED to compression N (for random
weights; reported as "forced").`,
		Example: `  dmc bench decode --model llama2-7b --random-weights --cr 1 --batch 1,16,64 --prompt 512 --gen 128
  dmc bench decode --model llama2-7b --random-weights --cr 1,2,4,8 --batch max --prompt 3968 --gen 128 --json out.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.Run(streams) },
	}
	f := dec.Flags()
	f.StringVar(&o.Model, "model", "", "model preset (e.g. llama2-7b, tiny-1b-gqa) or checkpoint path (required)")
	f.BoolVar(&o.RandomWeights, "random-weights", false, "draw random bf16 weights on the GPU (needed for presets)")
	f.StringVar(&o.CR, "cr", "1", "comma-separated compression settings: 1|vanilla, dmc, or N>1 (forced)")
	f.StringVar(&o.Batch, "batch", "1", "comma-separated batch sizes, or max (the largest batch that fits)")
	f.IntVar(&o.Prompt, "prompt", 512, "prompt tokens per sequence")
	f.IntVar(&o.Gen, "gen", 128, "generated tokens per sequence")
	f.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the random weights and prompts")
	f.IntVar(&o.Device, "device", 0, "GPU ordinal")
	f.Float64Var(&o.BandwidthGiB, "bandwidth-gib", 2, "size of the device copy that measures the bandwidth ceiling")
	_ = dec.MarkFlagRequired("model")
	cmd.AddCommand(dec)
	return cmd
}

// BenchReport is the JSON document of a run.
type BenchReport = retrofit.BenchReport

// Run executes the benchmark.
func (o *BenchDecodeOptions) Run(streams *IO) error {
	if err := firstErr(checkInt("prompt", o.Prompt, 1, "≥ 1 (prompt tokens per sequence)"),
		checkInt("gen", o.Gen, 3, "≥ 3 (generated tokens per sequence; the first two are not timed)"),
		checkFloat("bandwidth-gib", o.BandwidthGiB, func(x float64) bool { return x > 0 && x <= 1024 }, "in (0, 1024] (GiB copied to measure the bandwidth)"),
		checkInt("device", o.Device, 0, "≥ 0 (a GPU ordinal)"),
		retrofit.CheckWritable(o.JSON, "--json")); err != nil {
		return err
	}
	rep, err := retrofit.BenchDecode(retrofit.BenchOptions{Model: o.Model, RandomWeights: o.RandomWeights, CR: o.CR, Batch: o.Batch,
		Prompt: o.Prompt, Gen: o.Gen, Seed: o.Seed, Device: o.Device, BandwidthGiB: o.BandwidthGiB,
		Command: "dmc bench decode " + strings.Join(os.Args[min(len(os.Args), 3):], " ")}, streams.Err)
	if err != nil {
		return err
	}
	printBenchTable(streams, rep)
	if o.JSON != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.JSON, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func printBenchTable(streams *IO, rep *BenchReport) {
	fmt.Fprintf(streams.Out, "device: %s\nmodel: %s, weights: %s; copy bandwidth %.3f TB/s\n", rep.Device, rep.Model, rep.Weights, rep.CopyTBps)
	tw := tabwriter.NewWriter(streams.Out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cr\tbatch\tfits\tprefill ms\tdecode tok/s\tms/step\troofline ms\t% roofline\treal CR\tpage waste\tGPU GiB\tvs vanilla\t")
	for _, r := range rep.Rows {
		vs := "-"
		if r.SpeedupVsVanila > 0 {
			vs = fmt.Sprintf("%.2fx", r.SpeedupVsVanila)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.1f\t%.2f\t%.2f\t%.1f\t%.2f\t%.1f%%\t%.1f\t%s\t\n", r.CR, r.Batch, r.MaxBatchFits, r.PrefillMs,
			r.DecodeTokS, r.StepMsMedian, r.RooflineStepMs, 100*r.FracOfRoofline, r.RealCR, 100*r.PageWaste, r.GPUMemGiB, vs)
	}
	tw.Flush()
	if slices.ContainsFunc(rep.Rows, func(r retrofit.BenchRow) bool { return r.Forced }) {
		fmt.Fprintln(streams.Out, "forced-N rows: DMC merge pattern forced to compression N (random weights), not learned decisions")
	}
}
