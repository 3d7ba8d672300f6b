package retrofit

import (
	"fmt"
	"io"
	"time"

	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/model"
)

// GenerateOptions are the sampling settings of Generate.
type GenerateOptions struct {
	MaxTokens   int
	Temperature float64 // 0 = greedy
	TopP        float64
	Seed        uint64
	MaxContext  int // positions available to the sequence (prompt + generated)
}

// GenerateResult is what Generate measured.
type GenerateResult struct {
	PromptTokens, Generated int
	Prefill, Decode         time.Duration
	ID                      int // the decoder's sequence id (released by the caller when done)
}

// Generate is the sampling loop over any Decoder, CPU or CUDA: it prefills prompt, then
// samples (greedy at temperature 0) and streams each piece to out until MaxTokens, BOS/EOS or
// the context ends. The sequence stays in d (for its cache statistics) until released.
func Generate(d model.Decoder, tok tokenizer.Tokenizer, prompt []int, opt GenerateOptions, out io.Writer) (*GenerateResult, error) {
	if opt.MaxTokens <= 0 {
		return nil, fmt.Errorf("--max-tokens must be positive (got %d)", opt.MaxTokens)
	}
	if len(prompt) >= opt.MaxContext {
		return nil, fmt.Errorf("the prompt is %d tokens but the model's context is %d; shorten it", len(prompt), opt.MaxContext)
	}
	greedy := opt.Temperature == 0
	sampler := model.NewSampler(opt.Temperature, opt.TopP, opt.Seed)
	start := time.Now()
	ids, next, logits, err := d.Prefill([][]int{prompt}, !greedy)
	if err != nil {
		return nil, err
	}
	res := &GenerateResult{PromptTokens: len(prompt), Prefill: time.Since(start), ID: ids[0]}
	pick := func() int {
		if greedy {
			return next[0]
		}
		return model.Sample(sampler, logits[0])
	}
	prev, pos := prompt[len(prompt)-1], len(prompt)
	decodeStart := time.Now()
	for res.Generated < opt.MaxTokens && pos < opt.MaxContext {
		t := pick()
		res.Generated++
		if t == tok.BOS() || t == tok.EOS() {
			break
		}
		fmt.Fprint(out, tok.Piece(prev, t))
		prev = t
		if res.Generated == opt.MaxTokens || pos+1 >= opt.MaxContext {
			break
		}
		if next, logits, err = d.Decode(ids, []int{t}, !greedy); err != nil {
			return res, err
		}
		pos++
	}
	res.Decode = time.Since(decodeStart)
	return res, nil
}
