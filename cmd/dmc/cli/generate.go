package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/model"
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

// Run generates and streams text to streams.Out.
func (o *GenerateOptions) Run(streams *IO) error {
	if o.MaxTokens <= 0 {
		return fmt.Errorf("--max-tokens must be positive (got %d)", o.MaxTokens)
	}
	if o.Temperature < 0 {
		return fmt.Errorf("--temperature must be ≥ 0 (got %g); use 0 for greedy decoding", o.Temperature)
	}
	lm, err := loadLanguageModel(o.Model, o.Tokenizer)
	if err != nil {
		return err
	}
	if o.Device == "cuda" {
		return generateCUDA(o, lm, streams)
	}
	if o.Device != "cpu" {
		return fmt.Errorf("unknown --device %q: use cpu or cuda", o.Device)
	}
	cache, err := lm.newCache(o.Cache)
	if err != nil {
		return err
	}
	tok := lm.Tok
	prompt := tok.Encode(o.Prompt, true, false)
	cfg := lm.Weights.Config
	if len(prompt) >= cfg.MaxSeqLen {
		return fmt.Errorf("the prompt is %d tokens but the model's context is %d; shorten it", len(prompt), cfg.MaxSeqLen)
	}
	seed := o.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	sampler := model.NewSampler(o.Temperature, o.TopP, seed)
	m := model.New(lm.Weights)
	start := time.Now()
	logits, err := m.Forward(cache, prompt, 0, false)
	if err != nil {
		return err
	}
	prefill := time.Since(start)
	fmt.Fprint(streams.Out, o.Prompt)
	prev := prompt[len(prompt)-1]
	pos := len(prompt)
	generated := 0
	decodeStart := time.Now()
	for generated < o.MaxTokens && pos < cfg.MaxSeqLen {
		next := model.Sample(sampler, logits)
		generated++
		if next == tok.BOS() || next == tok.EOS() {
			break
		}
		fmt.Fprint(streams.Out, tok.Piece(prev, next))
		prev = next
		if generated == o.MaxTokens {
			break
		}
		if logits, err = m.Forward(cache, []int{next}, pos, false); err != nil {
			return err
		}
		pos++
	}
	fmt.Fprintln(streams.Out)
	if o.Stats {
		dec := time.Since(decodeStart)
		fmt.Fprintf(streams.Err, "prompt %d tokens in %v; generated %d tokens at %.1f tok/s; cache %s\n",
			len(prompt), prefill.Round(time.Millisecond), generated, float64(generated)/dec.Seconds(), lm.describeCache(cache))
	}
	return nil
}
