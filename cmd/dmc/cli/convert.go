package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/retrofit"
)

func init() { register(newConvertCmd) }

func newConvertCmd(streams *IO) *cobra.Command {
	var model, out string
	var kv int
	cmd := &cobra.Command{
		Use:   "convert --model M --kv-heads N --out DIR",
		Short: "Mean-pool a model's KV heads into N groups (the start of GQA uptraining)",
		Long: `Writes --model with its key and value projections mean-pooled into --kv-heads KV heads
(each new head the mean of the heads of its group; query heads unchanged), as a Hugging Face
fp32 directory with the model's tokenizer. Continued training on the same tokens
(dmc retrofit --model DIR --control ...) is GQA uptraining, the baseline DMC is compared with at
the same KV cache size: KV heads H → N is compression H/N.`,
		Example: `  dmc convert --model runs/base-export --kv-heads 2 --out runs/gqa4-init
  dmc retrofit --model runs/gqa4-init --control --data shards/ --out runs/gqa4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := retrofit.ConvertGQA(model, out, kv)
			if err != nil {
				return err
			}
			fmt.Fprintf(streams.Out, "wrote %s: %d query heads sharing %d KV heads (KV cache %s per token)\n", out, cfg.NHeads, cfg.NKVHeads,
				retrofit.HumanCount(cfg.KVBytesPerToken(2))+"B in bf16")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&model, "model", "", "model to convert: checkpoint, Hugging Face directory or export of a vanilla model (required)")
	f.IntVar(&kv, "kv-heads", 0, "KV heads of the result; must divide the model's (required)")
	f.StringVar(&out, "out", "", "output directory (required)")
	for _, n := range []string{"model", "kv-heads", "out"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}
