package tasks

import (
	"fmt"

	"github.com/dmc-project/dmc/model"
)

// BatchScorer scores many requests together through one decoder, the way a GPU engine is fast:
// up to Batch sequences at a time, their contexts prefilled together, then their continuations
// fed in lockstep decode steps, each step's logits scoring the next continuation token of
// every sequence (and checking it is the greedy choice). A sequence leaves the batch, and its
// cache is released, when its continuation is scored. The numbers are DecoderScorer's.
type BatchScorer struct {
	DecoderScorer
	Batch int // sequences at once (≥ 1)
	// Slots, when set and the decoder is a model.SlotCounter, hears each sequence's slots
	// before its release: the cache's real compression rate on the task (a DMC model's).
	Slots *SlotTally
}

// RequestScorer scores a whole task's requests at once (BatchScorer); progress hears the
// requests scored so far.
type RequestScorer interface {
	ScoreRequests(rs []Request, progress func(done int)) ([]float64, []bool, error)
}

// ScoreRequests returns the log-likelihood and greediness of every request, in order.
func (s BatchScorer) ScoreRequests(rs []Request, progress func(done int)) ([]float64, []bool, error) {
	lls, gs := make([]float64, len(rs)), make([]bool, len(rs))
	B := max(1, s.Batch)
	for lo := 0; lo < len(rs); lo += B {
		hi := min(len(rs), lo+B)
		if err := s.scoreChunk(rs[lo:hi], lls[lo:hi], gs[lo:hi]); err != nil {
			return nil, nil, err
		}
		if progress != nil {
			progress(hi)
		}
	}
	return lls, gs, nil
}

func (s BatchScorer) scoreChunk(rs []Request, lls []float64, gs []bool) error {
	toks, firsts := make([][]int, len(rs)), make([]int, len(rs))
	prompts := make([][]int, len(rs))
	for i, r := range rs {
		var err error
		if toks[i], firsts[i], err = s.tokens(r); err != nil {
			return err
		}
		prompts[i] = toks[i][:firsts[i]]
	}
	ids, next, logits, err := s.Dec.Prefill(prompts, true)
	if err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	// A decoder that scores targets itself (the GPU engine) returns B numbers per step instead
	// of B × vocabulary logits.
	ts, _ := s.Dec.(model.TargetScorer)
	live := make([]int, len(rs)) // requests still decoding, by index
	for i := range live {
		live[i] = i
		gs[i] = true
	}
	pos := append([]int(nil), firsts...) // the token each request scores next
	seq := append([]int(nil), ids...)
	counter, _ := s.Dec.(model.SlotCounter)
	release := func(i int) error {
		if s.Slots != nil && counter != nil {
			rows, err := counter.RowSlots(seq[i])
			if err != nil {
				return fmt.Errorf("cache slots: %w", err)
			}
			s.Slots.Add(len(toks[i])-1, rows) // the last token is scored, never cached
		}
		return s.Dec.Release(seq[i])
	}
	logp := make([]float64, len(rs))
	for k, i := range live {
		logp[k] = model.LogSoftmaxAt(logits[k], toks[i][pos[i]])
	}
	for {
		kept := live[:0]
		var feedIDs, feedToks, targets []int
		for k, i := range live {
			t := toks[i][pos[i]]
			lls[i] += logp[k]
			gs[i] = gs[i] && next[k] == t
			pos[i]++
			if pos[i] < len(toks[i]) {
				kept = append(kept, i)
				feedIDs, feedToks, targets = append(feedIDs, seq[i]), append(feedToks, t), append(targets, toks[i][pos[i]])
			} else if err := release(i); err != nil {
				return err
			}
		}
		live = kept
		if len(live) == 0 {
			return nil
		}
		if ts != nil {
			next, logp, err = ts.DecodeScore(feedIDs, feedToks, targets)
		} else if next, logits, err = s.Dec.Decode(feedIDs, feedToks, true); err == nil {
			for k, i := range live {
				logp[k] = model.LogSoftmaxAt(logits[k], toks[i][pos[i]])
			}
		}
		if err != nil {
			for _, i := range live {
				_ = s.Dec.Release(seq[i])
			}
			return fmt.Errorf("decode: %w", err)
		}
	}
}
