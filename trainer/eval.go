package trainer

import (
	"errors"
	"fmt"
	"io"
)

// EvalResult is a token-weighted average of Model.Forward over held-out batches.
type EvalResult struct {
	Loss, LM, CR, MeanAlpha float64
	Tokens, Batches         int
}

// AchievedCR is 1/(1 − mean α) (+Inf when every decision merges).
func (e EvalResult) AchievedCR() float64 { return 1 / (1 - e.MeanAlpha) }

// Evaluate runs m.Forward with sc over up to maxBatches batches of batchSize windows of
// seqLen+1 tokens from src (fewer if src ends). It does not move src back: callers that
// evaluate repeatedly Seek to a saved position first.
func Evaluate(m Model, src Source, batchSize, seqLen, maxBatches int, sc StepContext) (EvalResult, error) {
	b := Batch{Inputs: make([]int, batchSize*seqLen), Targets: make([]int, batchSize*seqLen), BatchSize: batchSize, SeqLen: seqLen}
	var res EvalResult
	for res.Batches < maxBatches {
		full := true
		for i := 0; i < batchSize; i++ {
			w, err := src.Next()
			if errors.Is(err, io.EOF) {
				full = false
				break
			} else if err != nil {
				return res, fmt.Errorf("evaluation data: %w", err)
			}
			if len(w) != seqLen+1 {
				return res, fmt.Errorf("evaluation data: a window of %d tokens; seq_len %d needs %d", len(w), seqLen, seqLen+1)
			}
			copy(b.Inputs[i*seqLen:], w[:seqLen])
			copy(b.Targets[i*seqLen:], w[1:])
		}
		if !full {
			break // a partial batch is dropped so every evaluation sees the same shapes
		}
		l, err := m.Forward(b, sc)
		if err != nil {
			return res, fmt.Errorf("evaluation: %w", err)
		}
		n := float64(l.Tokens)
		res.Loss += l.Loss * n
		res.LM += l.LM * n
		res.CR += l.CR * n
		res.MeanAlpha += l.MeanAlpha * n
		res.Tokens += l.Tokens
		res.Batches++
	}
	if res.Tokens == 0 {
		return res, errors.New("evaluation data is empty: give at least one full batch of held-out windows")
	}
	n := float64(res.Tokens)
	res.Loss, res.LM, res.CR, res.MeanAlpha = res.Loss/n, res.LM/n, res.CR/n, res.MeanAlpha/n
	return res, nil
}
