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
Llama loader reads its weights (the dmc block is extra).`,
		Example: `  dmc export --run runs/cr2 --out exports/cr2
  dmc export --run runs/cr2 --out exports/cr2 --dtype fp32 --measure shards/`,
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
	res, err := retrofit.Export(ctx, o.RunDir, o.Out, retrofit.ExportOptions{DType: o.DType, Measure: o.Measure,
		Tokenizer: o.Tokenizer, ShardMB: o.ShardMB, Force: o.Force, Warn: streams.Err})
	if err != nil {
		return err
	}
	fmt.Fprintf(streams.Out, "exported %s (%s, step %d) to %s as %s\n", o.RunDir, res.Checkpoint, res.Step, o.Out, o.DType)
	return nil
}
