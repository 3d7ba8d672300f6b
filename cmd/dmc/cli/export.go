package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/retrofit"
)

// ExportOptions are the flags of `dmc export`.
type ExportOptions struct {
	RunDir    string
	Out       string
	DType     string
	Measure   string
	Tokenizer string
	ShardMB   int64
	Force     bool
	// Calibration of the decision offset.
	CalibrateCR     bool
	CalibrateTokens int
	Device          string
}

func init() { register(newExportCmd) }

func newExportCmd(streams *IO) *cobra.Command {
	o := &ExportOptions{}
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export a retrofit run as a Hugging Face-style directory with a dmc block",
		Long: `Writes config.json (standard LlamaForCausalLM fields plus a "dmc" block: window, decision
channel, offsets, target CR and the achieved CR per layer and head), safetensors weights and
the tokenizer. dmc generate, dmc eval and the CUDA engine load it; a standard Hugging Face
Llama loader reads its weights (the dmc block is extra).

--calibrate-cr: training merges a token with probability σ(a), inference when a > 0, so after a
short retrofit the hard decisions can compress much more (or less) than the run trained for
(a stories260K CR 4 run: 6.4× at inference). Calibration bisects the decision offset, which
shifts every hard decision, until held-out text compresses by the target CR; the export keeps
the trained offset as trained_decision_offset and records the CR measured at the new one.`,
		Example: `  dmc export --run runs/cr2 --out exports/cr2
  dmc export --run runs/cr2 --out exports/cr2 --dtype fp32 --measure shards/
  dmc export --run runs/cr4 --out exports/cr4 --calibrate-cr [--device cuda]`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.Run(cmd.Context(), streams) },
	}
	f := cmd.Flags()
	f.StringVar(&o.RunDir, "run", "", "retrofit run directory (required)")
	f.StringVar(&o.Out, "out", "", "output directory (required)")
	f.StringVar(&o.DType, "dtype", "bf16", "weight dtype: bf16, fp16 or fp32")
	f.StringVar(&o.Measure, "measure", "", "held-out data on which to measure the achieved CR per layer/head (default: the run's heldout.json)")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer to ship (default: the run's)")
	f.Int64Var(&o.ShardMB, "shard-mb", 5000, "largest safetensors shard in MB")
	f.BoolVar(&o.Force, "force", false, "write into --out even if it holds something other than an export of this run")
	f.BoolVar(&o.CalibrateCR, "calibrate-cr", false, "move the decision offset to where the hard decisions compress held-out text (--measure, else the run's held-out data) by the run's target CR")
	f.IntVar(&o.CalibrateTokens, "calibrate-tokens", 32768, "held-out tokens each calibration measurement scores")
	f.StringVar(&o.Device, "device", "cpu", "where --calibrate-cr measures: cpu, or cuda (the CUDA engine; a dmc_cuda build)")
	_ = cmd.MarkFlagRequired("run")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// Run writes the export.
func (o *ExportOptions) Run(ctx context.Context, streams *IO) error {
	if o.ShardMB <= 0 {
		return fmt.Errorf("--shard-mb must be > 0 (the largest safetensors shard in MB; the default is 5000), got %d", o.ShardMB)
	}
	switch o.DType {
	case "bf16", "fp16", "fp32":
	default:
		return fmt.Errorf("--dtype must be bf16, fp16 or fp32, got %q", o.DType)
	}
	if o.Device != "cpu" && o.Device != "cuda" {
		return fmt.Errorf("unknown --device %q: use cpu or cuda", o.Device)
	}
	if o.CalibrateTokens < 2 {
		return fmt.Errorf("--calibrate-tokens must be ≥ 2, got %d", o.CalibrateTokens)
	}
	res, err := retrofit.Export(ctx, o.RunDir, o.Out, retrofit.ExportOptions{DType: o.DType, Measure: o.Measure,
		Tokenizer: o.Tokenizer, ShardMB: o.ShardMB, Force: o.Force, Warn: streams.Err,
		CalibrateCR: o.CalibrateCR, CalibrateTokens: o.CalibrateTokens, Device: o.Device, Progress: streams.Err})
	if err != nil {
		return err
	}
	fmt.Fprintf(streams.Out, "exported %s (%s, step %d) to %s as %s\n", o.RunDir, res.Checkpoint, res.Step, o.Out, o.DType)
	return nil
}
