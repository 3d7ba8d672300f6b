package cli

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/retrofit"
	"github.com/dmc-project/dmc/serve"
)

// ServeOptions are the flags of `dmc serve`.
type ServeOptions struct {
	retrofit.ServeOptions
	Addr      string
	APIKey    string
	Drain     time.Duration
	MaxTokens int
}

func init() { register(newServeCmd) }

func newServeCmd(streams *IO) *cobra.Command {
	o := &ServeOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a model over an OpenAI-compatible HTTP API with continuous batching",
		Long: `serve answers POST /v1/completions and /v1/chat/completions (streaming as server-sent
events), GET /v1/models, /health and /metrics (Prometheus text), on the CPU decoder or the CUDA
engine, with the model's real cache (DMC-compressed for a dmc export).

Completions take a string, a list of strings, or token ids (a list, or a list of lists, used
as given: no BOS is added; text prompts get BOS). logprobs (0-20) with echo returns every
prompt token's log-probability and its top alternatives, computed with the real cache, and
max_tokens 0 with echo scores the prompt only: what lm-evaluation-harness's local-completions
model sends (lm_eval --model local-completions --model_args
base_url=http://HOST:PORT/v1/completions,tokenizer=...). The model field of a request is not
checked; responses carry --model-id.

Chat completions render the messages with a plain template for base models:
"System: …\n\n" per system message, "User: …\n", "Assistant: …\n" per earlier turn, then
"Assistant:"; generation also stops at "\nUser:".

Requests that do not fit now wait for a slot in the batch; a prompt plus max_tokens over the
context is refused (400). A client that disconnects is cancelled at once. SIGTERM or Ctrl-C
drains: /health answers 503, new requests get 503, running ones have --drain to finish.`,
		Example: `  dmc serve --model stories260K.bin --tokenizer tok512.bin --addr 127.0.0.1:8000
  dmc serve --model runs/cr4/export --device cuda --max-batch 64 --api-key "$KEY"
  curl -s localhost:8000/v1/completions -d '{"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.Run(cmd, streams) },
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "model: llama2.c .bin, Hugging Face directory, or a dmc export directory (required)")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer.model or llama2.c tokenizer.bin (default: found next to the model)")
	f.StringVar(&o.Device, "device", "cpu", "cpu or cuda")
	f.StringVar(&o.Cache, "cache", "auto", "KV cache: auto (DMC for dmc exports, else vanilla), vanilla, or dmc")
	f.StringVar(&o.Addr, "addr", "127.0.0.1:8000", "listen address HOST:PORT (port 0 picks a free one)")
	f.IntVar(&o.MaxBatch, "max-batch", 8, "sequences decoded together; more requests wait")
	f.IntVar(&o.PrefillTokens, "prefill-tokens", 0, "bound on prompt tokens prefilled between two decode steps, for steadier inter-token latency under bursts (0: none)")
	f.IntVar(&o.MaxContext, "max-context", 0, "positions per sequence, prompt plus output (0: the model's max_seq_len)")
	f.StringVar(&o.APIKey, "api-key", "", "require Authorization: Bearer KEY on /v1 (default: $DMC_API_KEY; empty: no key)")
	f.StringVar(&o.ModelID, "model-id", "", "model name in responses and /v1/models (default: the model's file or directory name)")
	f.DurationVar(&o.Drain, "drain", 30*time.Second, "on SIGTERM, how long running requests may take to finish")
	f.IntVar(&o.MaxTokens, "default-max-tokens", 16, "max_tokens of a request that gives none")
	_ = cmd.MarkFlagRequired("model")
	return cmd
}

// Run loads the model and serves until SIGTERM or Ctrl-C.
func (o *ServeOptions) Run(cmd *cobra.Command, streams *IO) error {
	if o.Device != "cpu" && o.Device != "cuda" {
		return fmt.Errorf("unknown --device %q: use cpu or cuda", o.Device)
	}
	if o.APIKey == "" {
		o.APIKey = os.Getenv("DMC_API_KEY")
	}
	o.Warn = streams.Err
	b, err := retrofit.OpenServe(o.ServeOptions)
	if err != nil {
		return err
	}
	defer b.Decoder.Close()
	s, err := serve.New(b.Backend, serve.Options{APIKey: o.APIKey, DefaultMaxTokens: o.MaxTokens})
	if err != nil {
		return err
	}
	ctx, stop, caught := signalContext(cmd.Context())
	defer stop()
	err = s.Run(ctx, o.Addr, o.Drain, func(addr string) {
		fmt.Fprintf(streams.Err, "serving %s on http://%s (POST /v1/completions, /v1/chat/completions; GET /v1/models, /health, /metrics)\n", b.Description, addr)
	})
	if sig := caught(); sig != nil {
		fmt.Fprintf(streams.Err, "%v: drained and stopped\n", sig)
	}
	return err
}
