package cli

import (
	"fmt"
	"time"

	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
)

// generateCUDA is `dmc generate --device cuda`: the same sampling loop as the CPU path, on
// the CUDA engine (kernels). In a binary built without the cuda tag it returns
// kernels.ErrNoCUDA, which says how to rebuild.
func generateCUDA(o *GenerateOptions, lm *languageModel, streams *IO) error {
	if err := kernels.Available(); err != nil {
		return err
	}
	cfg := lm.Weights.Config
	opt := kernels.DefaultOptions()
	switch o.Cache {
	case "auto":
		opt.DMC = lm.DMC != nil
	case "dmc":
		opt.DMC = true
	case "vanilla":
	default:
		return fmt.Errorf("unknown --cache %q: use auto, vanilla or dmc", o.Cache)
	}
	if opt.DMC && lm.DMC != nil {
		c := lm.DMC.Config
		opt.Window, opt.DecisionChannel = c.Window, c.Channel(cfg.HeadDim())
		opt.DecisionOffset, opt.ImportanceOffset = c.DecisionOffset, c.ImportanceOffset
	}
	tok := lm.Tok
	prompt := tok.Encode(o.Prompt, true, false)
	if len(prompt) >= cfg.MaxSeqLen {
		return fmt.Errorf("the prompt is %d tokens but the model's context is %d; shorten it", len(prompt), cfg.MaxSeqLen)
	}
	opt.MaxContext = min(cfg.MaxSeqLen, len(prompt)+o.MaxTokens+1)
	e, err := kernels.NewEngine(lm.Weights, opt)
	if err != nil {
		return err
	}
	defer e.Close()
	seed := o.Seed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	sampler := model.NewSampler(o.Temperature, o.TopP, seed)
	greedy := o.Temperature == 0
	start := time.Now()
	ids, next, logits, err := e.Prefill([][]int{prompt}, !greedy)
	if err != nil {
		return err
	}
	prefill := time.Since(start)
	fmt.Fprint(streams.Out, o.Prompt)
	pick := func() int {
		if greedy {
			return next[0]
		}
		return model.Sample(sampler, logits[0])
	}
	prev, pos, generated := prompt[len(prompt)-1], len(prompt), 0
	decodeStart := time.Now()
	for generated < o.MaxTokens && pos < opt.MaxContext {
		t := pick()
		generated++
		if t == tok.BOS() || t == tok.EOS() {
			break
		}
		fmt.Fprint(streams.Out, tok.Piece(prev, t))
		prev = t
		if generated == o.MaxTokens || pos+1 >= opt.MaxContext {
			break
		}
		if next, logits, err = e.Decode(ids, []int{t}, !greedy); err != nil {
			return err
		}
		pos++
	}
	fmt.Fprintln(streams.Out)
	if o.Stats {
		st, err := e.CacheStats()
		if err != nil {
			return err
		}
		cache := "vanilla"
		if opt.DMC {
			cache = fmt.Sprintf("DMC, %d slots, compression %.2fx", st.Slots, st.CR())
		}
		fmt.Fprintf(streams.Err, "[%s] prompt %d tokens in %v; generated %d tokens at %.1f tok/s; cache %s\n", e.Device(),
			len(prompt), prefill.Round(time.Millisecond), generated, float64(generated)/time.Since(decodeStart).Seconds(), cache)
	}
	return nil
}
