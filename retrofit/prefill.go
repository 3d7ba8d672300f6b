package retrofit

import (
	"fmt"
	"io"
	"time"
)

// prefiller is the part of a decoder that bench's timed prefill drives.
type prefiller interface {
	Prefill(prompts [][]int, wantLogits bool) (ids, next []int, logits [][]float32, err error)
	Release(ids ...int) error
}

// prefillProgressTokens is the prompt volume above which a prefill is cut into pieces with a
// progress line after each: at a few hundred thousand tokens per second, a batch as large as
// --batch max picks at high CR (tens of thousands of sequences) prefills for minutes.
const prefillProgressTokens = 8 << 20

// prefillReporting prefills prompts as one call, or, above prefillProgressTokens, in about
// ten pieces with a progress line (sequences, tokens/s, ETA) after each. The engine chunks
// by its own prefill size either way, so the pieces change what is timed only by the calls'
// fixed cost. On an error the sequences prefilled so far are released.
func prefillReporting(e prefiller, prompts [][]int, progress io.Writer) (ids, next []int, err error) {
	total := 0
	for _, p := range prompts {
		total += len(p)
	}
	pieces := 1
	if total > prefillProgressTokens && progress != nil {
		pieces = min(10, len(prompts))
	}
	t0 := time.Now()
	done := 0
	for k := 0; k < pieces; k++ {
		lo, hi := k*len(prompts)/pieces, (k+1)*len(prompts)/pieces
		cids, cnext, _, err := e.Prefill(prompts[lo:hi], false)
		if err != nil {
			_ = e.Release(ids...)
			return nil, nil, err
		}
		ids, next = append(ids, cids...), append(next, cnext...)
		for _, p := range prompts[lo:hi] {
			done += len(p)
		}
		if pieces > 1 {
			el := time.Since(t0)
			rate := float64(done) / el.Seconds()
			eta := time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second)
			fmt.Fprintf(progress, "prefill %d/%d sequences (%.1fM of %.1fM tokens), %.0f tok/s, ETA %s\n",
				hi, len(prompts), float64(done)/1e6, float64(total)/1e6, rate, eta)
		}
	}
	return ids, next, nil
}
