package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/retrofit"
)

// InspectOptions are the flags of `dmc inspect`.
type InspectOptions struct {
	Model string
	JSON  bool
}

func init() { register(newInspectCmd) }

func newInspectCmd(streams *IO) *cobra.Command {
	o := &InspectOptions{}
	cmd := &cobra.Command{
		Use:   "inspect",
		Short: "Show a model's architecture, parameter count and KV-cache bytes per token",
		Example: `  dmc inspect --model llama2-7b
  dmc inspect --model stories260K.bin
  dmc inspect --model ~/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.Run(streams) },
	}
	cmd.Flags().StringVar(&o.Model, "model", "", "model file, directory, hub id, or preset name ("+fmt.Sprint(model.PresetNames())+")")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print JSON instead of a table")
	_ = cmd.MarkFlagRequired("model")
	return cmd
}

// inspectReport is the JSON form of `dmc inspect`.
type inspectReport struct {
	Source              string       `json:"source"`
	Config              model.Config `json:"config"`
	HeadDim             int          `json:"head_dim"`
	Params              int64        `json:"params"`
	WeightBytesBF16     int64        `json:"weight_bytes_bf16"`
	KVBytesPerTokenBF16 int64        `json:"kv_bytes_per_token_bf16"`
	KVBytesPerTokenFP32 int64        `json:"kv_bytes_per_token_fp32"`
	DMC                 any          `json:"dmc,omitempty"`
}

// Run prints the report.
func (o *InspectOptions) Run(streams *IO) error {
	ci, err := retrofit.LoadConfig(o.Model)
	if err != nil {
		return err
	}
	cfg, source, dmcInfo := ci.Config, ci.Source, ci.DMC
	r := inspectReport{Source: source, Config: cfg, HeadDim: cfg.HeadDim(), Params: cfg.NumParams(),
		WeightBytesBF16: 2 * cfg.NumParams(), KVBytesPerTokenBF16: cfg.KVBytesPerToken(2),
		KVBytesPerTokenFP32: cfg.KVBytesPerToken(4)}
	if dmcInfo != nil {
		r.DMC = dmcInfo
	}
	if o.JSON {
		enc := json.NewEncoder(streams.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(w, "%s\t%v\n", k, v) }
	row("source", source)
	if cfg.Name != "" {
		row("name", cfg.Name)
	}
	row("layers", cfg.NLayers)
	row("dim", cfg.Dim)
	row("ffn hidden dim", cfg.HiddenDim)
	attn := "multi-head"
	if cfg.NKVHeads < cfg.NHeads {
		attn = fmt.Sprintf("grouped-query, %d query heads per KV head", cfg.GroupSize())
	}
	row("heads (query / KV)", fmt.Sprintf("%d / %d (%s)", cfg.NHeads, cfg.NKVHeads, attn))
	row("head dim", cfg.HeadDim())
	row("vocab", cfg.VocabSize)
	row("context", cfg.MaxSeqLen)
	row("RoPE", fmt.Sprintf("%s pairs, theta %g", cfg.RoPE, cfg.RopeTheta))
	row("classifier", map[bool]string{true: "tied to the embedding", false: "separate"}[cfg.TieEmbeddings])
	row("parameters", retrofit.HumanCount(cfg.NumParams()))
	row("weights (bf16)", humanBytes(2*cfg.NumParams()))
	row("KV cache per token", fmt.Sprintf("%s bf16, %s fp32", humanBytes(cfg.KVBytesPerToken(2)), humanBytes(cfg.KVBytesPerToken(4))))
	row("KV cache at full context", humanBytes(cfg.KVBytesPerToken(2)*int64(cfg.MaxSeqLen))+" bf16 per sequence")
	if dmcInfo != nil {
		b, _ := json.Marshal(dmcInfo)
		row("DMC", string(b))
	}
	return w.Flush()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
