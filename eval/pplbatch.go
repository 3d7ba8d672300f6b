package eval

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"sync"
	"time"

	"github.com/dmc-project/dmc/model"
)

// PerplexityOn is Perplexity through a Decoder, the way a GPU engine is fast: up to batch
// sequences at a time, each prefilled with its first token and then decoded in lockstep, every
// step's logits scoring the next token of each sequence. The sequences are Perplexity's (the
// same chunks of opts.SeqLen up to opts.MaxTokens), so the numbers agree up to the decoder's
// arithmetic. The real compression rate comes from the decoder's slot counts
// (model.SlotCounter), read before each sequence is released; a decoder without them is
// counted as a vanilla cache. opts.Workers bounds the goroutines that score the logits.
func PerplexityOn(ctx context.Context, dec model.Decoder, cfg model.Config, docs iter.Seq2[[]int32, error], opts PPLOptions, batch int) (*PPLResult, error) {
	opts, err := opts.resolve(cfg)
	if err != nil {
		return nil, err
	}
	workers := opts.Workers
	batch = max(1, batch)
	heads := cfg.NLayers * cfg.NKVHeads
	counter, _ := dec.(model.SlotCounter)
	start := time.Now()
	res := &PPLResult{}
	seen, slots := make([]int64, heads), make([]int64, heads)
	var pending [][]int
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		nll, err := scoreBatch(dec, counter, pending, workers, seen, slots)
		if err != nil {
			return err
		}
		for i, seq := range pending {
			res.NLL += nll[i]
			res.Tokens += len(seq) - 1
		}
		res.Sequences += len(pending)
		pending = pending[:0]
		if opts.Progress != nil {
			opts.Progress(res.Tokens)
		}
		return ctx.Err()
	}
	for seq, err := range sequences(docs, cfg.VocabSize, opts.SeqLen, opts.MaxTokens) {
		if err != nil {
			return nil, err
		}
		if pending = append(pending, seq); len(pending) == batch {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if res.Sequences == 0 {
		return nil, errors.New("eval: no sequence of at least 2 tokens to score in the data")
	}
	res.finish(cfg, seen, slots, start)
	return res, nil
}

// scoreBatch decodes seqs together and returns each one's summed −log p; it adds the tokens
// each (layer, KV head) row ingested and the slots it holds to seen and slots. A decoder that
// is a model.TargetScorer scores the tokens itself (on the GPU, next to the logits); otherwise
// the logits come back and are scored here, on workers goroutines.
func scoreBatch(dec model.Decoder, counter model.SlotCounter, seqs [][]int, workers int, seen, slots []int64) ([]float64, error) {
	prompts := make([][]int, len(seqs))
	for i, s := range seqs {
		prompts[i] = s[:1]
	}
	ids, _, logits, err := dec.Prefill(prompts, true)
	if err != nil {
		return nil, fmt.Errorf("prefill: %w", err)
	}
	targetScorer, _ := dec.(model.TargetScorer)
	nll := make([]float64, len(seqs))
	pos := make([]int, len(seqs)) // the token each sequence scores next
	live := make([]int, len(seqs))
	for i := range seqs {
		pos[i], live[i] = 1, i
	}
	release := func(idx []int) {
		for _, i := range idx {
			_ = dec.Release(ids[i])
		}
	}
	// logp[k] is log p(seqs[live[k]][pos[live[k]]] | its prefix); first from the prefill's logits.
	logp := make([]float64, len(live))
	fromLogits := func() {
		scoreParallel(workers, len(live), func(k int) {
			i := live[k]
			logp[k] = -crossEntropy(logits[k], seqs[i][pos[i]])
		})
	}
	fromLogits()
	for {
		kept := live[:0]
		var feedIDs, feedToks, targets []int
		for k, i := range live {
			nll[i] -= logp[k]
			if pos[i]++; pos[i] < len(seqs[i]) {
				kept = append(kept, i)
				feedIDs, feedToks, targets = append(feedIDs, ids[i]), append(feedToks, seqs[i][pos[i]-1]), append(targets, seqs[i][pos[i]])
				continue
			}
			ingested := int64(len(seqs[i]) - 1)
			var rows []int
			if counter != nil {
				if rows, err = counter.RowSlots(ids[i]); err != nil {
					release(append(kept, live[k:]...))
					return nil, err
				}
			}
			for r := range seen {
				seen[r] += ingested
				if rows != nil {
					slots[r] += int64(rows[r])
				} else {
					slots[r] += ingested
				}
			}
			if err := dec.Release(ids[i]); err != nil {
				return nil, err
			}
		}
		live = kept
		if len(live) == 0 {
			return nll, nil
		}
		if targetScorer != nil {
			_, logp, err = targetScorer.DecodeScore(feedIDs, feedToks, targets)
		} else if _, logits, err = dec.Decode(feedIDs, feedToks, true); err == nil {
			logp = logp[:len(live)]
			fromLogits()
		}
		if err != nil {
			release(live)
			return nil, fmt.Errorf("decode: %w", err)
		}
	}
}

// scoreParallel runs f(0..n-1) on up to workers goroutines (a vocabulary-wide log-softmax per
// sequence is the host's share of every decode step).
func scoreParallel(workers, n int, f func(k int)) {
	workers = min(workers, n)
	if workers <= 1 {
		for k := range n {
			f(k)
		}
		return
	}
	var wg sync.WaitGroup
	per := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += per {
		hi := min(n, lo+per)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := lo; k < hi; k++ {
				f(k)
			}
		}()
	}
	wg.Wait()
}
