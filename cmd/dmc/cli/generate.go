package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/retrofit"
)

// GenerateOptions are the flags of `dmc generate`.
type GenerateOptions struct {
	Model       string
	Tokenizer   string
	Prompt      string
	MaxTokens   int
	Temperature float64
	TopP        float64
	Seed        uint64
	Device      string
	Cache       string
	Stats       bool
}

func init() { register(newGenerateCmd) }

func newGenerateCmd(streams *IO) *cobra.Command {
	o := &GenerateOptions{}
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Generate text from a model (llama2.c .bin, Hugging Face directory, or a dmc export)",
		Example: `  dmc generate --model stories260K.bin --tokenizer tok512.bin --max-tokens 64 --temperature 0
  dmc generate --model runs/demo/export --prompt "Once upon a time" --temperature 0.8 --seed 7`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.Run(streams) },
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "model: llama2.c .bin file, Hugging Face directory or hub id, or a dmc export directory (required)")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer.model or llama2.c tokenizer.bin (default: found next to the model)")
	f.StringVar(&o.Prompt, "prompt", "", "prompt text (empty: start from BOS)")
	f.IntVar(&o.MaxTokens, "max-tokens", 256, "number of tokens to generate")
	f.Float64Var(&o.Temperature, "temperature", 0.8, "sampling temperature; 0 = greedy")
	f.Float64Var(&o.TopP, "top-p", 0.9, "nucleus sampling mass (1 disables)")
	f.Uint64Var(&o.Seed, "seed", 0, "random seed (default: time-based)")
	f.StringVar(&o.Device, "device", "cpu", "cpu or cuda")
	f.StringVar(&o.Cache, "cache", "auto", "KV cache: auto (DMC for dmc exports, else vanilla), vanilla, or dmc")
	f.BoolVar(&o.Stats, "stats", true, "print speed and cache statistics to stderr at the end")
	_ = cmd.MarkFlagRequired("model")
	return cmd
}

// Run generates and streams text to streams.Out, on the CPU or the CUDA engine (the same loop).
func (o *GenerateOptions) Run(streams *IO) error {
	if o.MaxTokens <= 0 {
		return fmt.Errorf("--max-tokens must be positive (got %d)", o.MaxTokens)
	}
	if !finite(o.Temperature) || o.Temperature < 0 {
		return fmt.Errorf("--temperature must be a finite number ≥ 0 (got %g); use 0 for greedy decoding", o.Temperature)
	}
	if err := checkFloat("top-p", o.TopP, func(p float64) bool { return p > 0 && p <= 1 }, "in (0, 1] (1 disables nucleus sampling)"); err != nil {
		return err
	}
	if o.Device != "cpu" && o.Device != "cuda" {
		return fmt.Errorf("unknown --device %q: use cpu or cuda", o.Device)
	}
	m, err := retrofit.LoadModel(o.Model, retrofit.LoadOptions{Tokenizer: o.Tokenizer, NeedTokenizer: true, Warn: streams.Err})
	if err != nil {
		return err
	}
	cache, err := m.Cache(o.Cache)
	if err != nil {
		return err
	}
	prompt := m.Tokenizer.Encode(o.Prompt, true, false)
	seed := o.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	gopt := retrofit.GenerateOptions{MaxTokens: o.MaxTokens, Temperature: o.Temperature, TopP: o.TopP, Seed: seed,
		MaxContext: m.Weights.Config.MaxSeqLen}
	dec, err := retrofit.NewDecoder(m, cache, o.Device, len(prompt)+o.MaxTokens+1)
	if err != nil {
		return err
	}
	defer dec.Close()
	if o.Device == "cuda" {
		gopt.MaxContext = min(gopt.MaxContext, len(prompt)+o.MaxTokens+1)
	}
	fmt.Fprint(streams.Out, o.Prompt)
	res, err := retrofit.Generate(dec, m.Tokenizer, prompt, gopt, streams.Out)
	if err != nil {
		return err
	}
	fmt.Fprintln(streams.Out)
	if o.Stats {
		desc, err := dec.Describe(res.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(streams.Err, "%sprompt %d tokens in %v; generated %d tokens at %.1f tok/s; cache %s\n", dec.Label(),
			res.PromptTokens, res.Prefill.Round(time.Millisecond), res.Generated, float64(res.Generated)/res.Decode.Seconds(), desc)
	}
	return nil
}
