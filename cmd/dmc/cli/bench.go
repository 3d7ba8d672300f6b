package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/model"
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
	Data          string
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
weights; reported as "forced"). With learned decisions, --batch max is sized for the export's
measured compression less a margin; --data feeds real text as prompts.`,
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
	f.StringVar(&o.Data, "data", "", "prompts from this data (prepared shards' held-out split, or a text file) instead of random tokens: what a model's learned DMC decisions should see")
	_ = dec.MarkFlagRequired("model")
	cmd.AddCommand(dec, newBenchTrainCmd(streams), newBenchServeCmd(streams))
	return cmd
}

// BenchTrainOptions are the flags of `dmc bench train`.
type BenchTrainOptions struct {
	Model         string
	RandomWeights bool
	Device        string
	Seq, Batch    int
	Cache         string
	Steps, Warmup int
	GEMM          string
	JSON          string
	Seed          uint64
	Profile       bool
	Train         string
	Recompute     bool
}

func newBenchTrainCmd(streams *IO) *cobra.Command {
	o := &BenchTrainOptions{}
	cmd := &cobra.Command{
		Use:   "train",
		Short: "Training-step throughput of the GPU trainer: tokens/s, step time, MFU, peak memory",
		Long: `Runs --warmup untimed and --steps timed training steps (forward, backward, gradient clipping
and AdamW, all on the GPU) of the DMC graph (--cache dmc: relaxed decisions, stage 2) or the
vanilla graph, on random tokens, and reports the median step time, tokens/s, MFU and the peak
device memory. MFU = graph.StepFLOPs (6·matmul parameters·tokens + 12·layers·heads·D·T·tokens
for attention) / step time / the device's dense bf16 peak, which is printed with it.`,
		Example: `  dmc bench train --model bench-953m --random-weights --device cuda --seq 2048 --batch 8 --cache dmc
  dmc bench train --model llama2-7b --random-weights --device cuda --seq 4096 --batch 1 --json 7b.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.Run(streams) },
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "model preset ("+fmt.Sprint(model.PresetNames())+"), YAML config or checkpoint (required)")
	f.BoolVar(&o.RandomWeights, "random-weights", false, "random initial weights (for presets and configs)")
	f.StringVar(&o.Device, "device", "cuda", "cuda (GPU 0)")
	f.IntVar(&o.Seq, "seq", 2048, "sequence length")
	f.IntVar(&o.Batch, "batch", 8, "sequences per step")
	f.StringVar(&o.Cache, "cache", "dmc", "dmc (the DMC training graph) or vanilla")
	f.IntVar(&o.Steps, "steps", 5, "timed steps")
	f.IntVar(&o.Warmup, "warmup", 2, "untimed warm-up steps")
	f.StringVar(&o.GEMM, "gemm", "bf16", "GEMM operands: bf16 or fp32")
	f.StringVar(&o.JSON, "json", "", "also write the report as JSON to this file")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the weights and tokens")
	f.BoolVar(&o.Recompute, "recompute", false, "recompute each layer's activations in the backward (less memory, ~1/3 more compute)")
	f.StringVar(&o.Train, "train", "all", "what is trained: all, attention or decisions (the recipe's train field)")
	f.BoolVar(&o.Profile, "profile", false, "also time every op of one extra step (forward, backward, bf16 casts and the optimizer update) and print the table")
	_ = cmd.MarkFlagRequired("model")
	return cmd
}

// Run executes the benchmark.
func (o *BenchTrainOptions) Run(streams *IO) error {
	if err := firstErr(checkInt("seq", o.Seq, 1, "≥ 1 (tokens per sequence)"), checkInt("batch", o.Batch, 1, "≥ 1 (sequences per step)"),
		checkInt("steps", o.Steps, 1, "≥ 1 (timed steps)"), checkInt("warmup", o.Warmup, 0, "≥ 0 (untimed steps)"),
		retrofit.CheckWritable(o.JSON, "--json")); err != nil {
		return err
	}
	if o.GEMM != "bf16" && o.GEMM != "fp32" {
		return fmt.Errorf("unknown --gemm %q: use bf16 or fp32", o.GEMM)
	}
	rep, err := retrofit.BenchTrain(retrofit.TrainBenchOptions{Model: o.Model, RandomWeights: o.RandomWeights, Seq: o.Seq, Batch: o.Batch,
		Cache: o.Cache, Device: o.Device, Steps: o.Steps, Warmup: o.Warmup, GEMM: o.GEMM, Seed: o.Seed, Profile: o.Profile, Train: o.Train, Recompute: o.Recompute,
		Command: "dmc bench train " + strings.Join(os.Args[min(len(os.Args), 3):], " ")}, streams.Err)
	if err != nil {
		return err
	}
	fmt.Fprintf(streams.Out, "device: %s\nmodel: %s (%s params), %d×%d tokens, %s graph, train %s, %s GEMMs, recompute %t\n", rep.Device, rep.Model,
		retrofit.HumanCount(rep.Params), rep.Batch, rep.Seq, rep.Cache, rep.Train, rep.GEMM, rep.Recompute)
	fmt.Fprintf(streams.Out, "median step %.1f ms, %.0f tokens/s, MFU %.1f%% of %.0f TFLOP/s (dense bf16 peak), peak memory %.1f GiB (arena %.1f GiB)\n",
		rep.MedianMs, rep.TokensPerS, 100*rep.MFU, rep.PeakFLOPS/1e12, rep.PeakMemGiB, rep.ArenaGiB)
	if rep.Profile != "" {
		fmt.Fprintf(streams.Out, "per-op time of one step (synchronised after every op):\n%s", rep.Profile)
	}
	if o.JSON != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.JSON, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
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
		Prompt: o.Prompt, Gen: o.Gen, Seed: o.Seed, Device: o.Device, BandwidthGiB: o.BandwidthGiB, Data: o.Data,
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
