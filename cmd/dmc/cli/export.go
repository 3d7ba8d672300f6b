package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
)

// ExportOptions are the flags of `dmc export`.
type ExportOptions struct {
	RunDir    string
	Out       string
	DType     string
	Measure   string
	Tokenizer string
	ShardMB   int64
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
	_ = cmd.MarkFlagRequired("run")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// Run writes the export.
func (o *ExportOptions) Run(ctx context.Context, streams *IO) error {
	if !isRunDir(o.RunDir) {
		return fmt.Errorf("%s is not a retrofit run directory (no checkpoints/ inside): pass the --out of dmc retrofit", o.RunDir)
	}
	w, info, ck, err := loadRunDir(o.RunDir, streams.Err)
	if err != nil {
		return err
	}
	tokPath := o.Tokenizer
	if tokPath == "" {
		tokPath = info.Tokenizer
	}
	var extra map[string]any
	if info.DMC != nil {
		d := &checkpoints.DMCInfo{Config: *info.DMC, TargetCR: info.TargetCR, TrainedSteps: ck.State.Step}
		// WriteHF stores the rotate-half layout; the decision channel moves with its rows.
		D := w.Config.HeadDim()
		d.DecisionChannel = checkpoints.RoPEChannel(info.DMC.Channel(D), D, w.Config.RoPE, model.RoPEHalf)
		var measured *eval.PPLResult
		if o.Measure != "" {
			ds, err := data.OpenWith(o.Measure, data.OpenOptions{Split: splitOf(o.Measure, "heldout")})
			if err != nil {
				return err
			}
			if measured, err = eval.Perplexity(ctx, w, eval.DMCCaches(w.Config, *info.DMC), ds.Documents(), eval.PPLOptions{}); err != nil {
				return err
			}
		} else if b, err := os.ReadFile(filepath.Join(o.RunDir, "heldout.json")); err == nil {
			measured = &eval.PPLResult{}
			if json.Unmarshal(b, measured) != nil {
				measured = nil
			}
		}
		if measured != nil {
			d.AchievedCR, d.AchievedByLayer, d.AchievedByHead = measured.CR, measured.CRPerLayer, measured.CRPerHead
		} else {
			fmt.Fprintln(streams.Err, "note: achieved CR not recorded (no heldout.json in the run); pass --measure DATA to measure it")
		}
		extra = map[string]any{"dmc": d.ConfigBlock()}
	}
	if err := checkpoints.WriteHF(o.Out, w, o.DType, extra, o.ShardMB*1_000_000); err != nil {
		return err
	}
	if tokPath != "" {
		if err := copyFile(tokPath, filepath.Join(o.Out, tokenizerFileName(tokPath))); err != nil {
			return fmt.Errorf("copy the tokenizer: %w", err)
		}
	} else {
		fmt.Fprintln(streams.Err, "note: the run records no tokenizer; pass --tokenizer to ship one with the export")
	}
	fmt.Fprintf(streams.Out, "exported %s (%s, step %d) to %s as %s\n", o.RunDir, ck.Name, ck.State.Step, o.Out, o.DType)
	return nil
}

// tokenizerFileName is the name a tokenizer gets inside an export, where tokenizer.Find looks.
func tokenizerFileName(src string) string {
	if filepath.Ext(src) == ".model" {
		return "tokenizer.model"
	}
	return "tokenizer.bin"
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
