package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/retrofit"
)

// BenchServeOptions are the flags of `dmc bench serve`.
type BenchServeOptions struct {
	retrofit.BenchServeOptions
	JSON string
}

func newBenchServeCmd(streams *IO) *cobra.Command {
	o := &BenchServeOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serving throughput and latency of dmc serve on the CUDA engine, vanilla against DMC",
		Long: `For each compression setting, starts dmc serve's server on the CUDA engine with as many
concurrent sequences as the GPU memory holds (or --max-batch), then sends --load × that many
streaming clients over loopback, each --requests completions of a random --prompt-token prompt
with max_tokens --gen (greedy). Reports requests/s, output tokens/s, time to first token and
inter-token latency (p50, p99), failures, and the KV pool pages still used afterwards (0: no
leak). The load test stops by itself after --timeout.`,
		Example: `  dmc bench serve --model llama2-7b --random-weights --cr vanilla,4 --prompt 512 --gen 128 --json serve.json`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := retrofit.BenchServe(o.BenchServeOptions, streams.Err)
			if err != nil {
				return err
			}
			if o.JSON != "" {
				b, _ := json.MarshalIndent(rep, "", "  ")
				if err := os.WriteFile(o.JSON, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			fmt.Fprintf(streams.Out, "%s on %s (%s): %d-token prompts, %d output tokens\n", rep.Model, rep.Device, rep.Weights, rep.Prompt, rep.Gen)
			for _, r := range rep.Rows {
				fmt.Fprintf(streams.Out, "%-10s %5d seqs %6.2f req/s %8.0f tok/s  TTFT p50 %6.0f ms p99 %6.0f ms  ITL p50 %5.1f ms p99 %5.1f ms  failed %d  pages left %d\n",
					r.CR, r.MaxBatch, r.RequestsPerSec, r.OutputTokensPerSec, r.TTFTp50Ms, r.TTFTp99Ms, r.ITLp50Ms, r.ITLp99Ms, r.Failed, r.PagesUsedAfter)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "model preset (with --random-weights) or checkpoint (required)")
	f.BoolVar(&o.RandomWeights, "random-weights", false, "random bf16 weights on the GPU (needed for presets)")
	f.StringVar(&o.CR, "cr", "vanilla,4", "comma-separated settings: vanilla, dmc (learned), or N > 1 (DMC forced to CR N)")
	f.IntVar(&o.Prompt, "prompt", 512, "prompt tokens per request")
	f.IntVar(&o.Gen, "gen", 128, "max_tokens per request")
	f.IntVar(&o.Requests, "requests", 2, "requests per client")
	f.IntVar(&o.MaxBatch, "max-batch", 0, "concurrent sequences (0: as many as fit)")
	f.Float64Var(&o.Load, "load", 2, "clients per concurrent sequence (2: twice the saturating load)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the random weights and prompt")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "bound of each setting's load test")
	f.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	_ = cmd.MarkFlagRequired("model")
	return cmd
}
