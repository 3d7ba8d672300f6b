package trainer

import (
	"encoding/json"
	"fmt"
	"time"
)

// prefetchDepth is how many micro-batches the reader keeps ready ahead of the step.
const prefetchDepth = 2

// microBatch is one prefetched micro-batch and the source position just after it.
type microBatch struct {
	inputs, targets []int
	pos             json.RawMessage
	err             error
}

// prefetcher reads and packs micro-batches on its own goroutine, ahead of the step, so that a
// fast device never waits for the data; it is the only user of the source while it runs, and
// it hands over each batch with the position after it, so checkpoints record exactly what
// the steps consumed (never what was merely read ahead).
type prefetcher struct {
	ch   chan microBatch
	stop chan struct{}
	done chan struct{}
}

func startPrefetch(src Source, batch, seqLen int) *prefetcher {
	p := &prefetcher{ch: make(chan microBatch, prefetchDepth), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			mb := microBatch{inputs: make([]int, batch*seqLen), targets: make([]int, batch*seqLen)}
			for b := 0; b < batch && mb.err == nil; b++ {
				w, err := src.Next()
				switch {
				case err != nil:
					mb.err = err
				case len(w) != seqLen+1:
					mb.err = fmt.Errorf("the data source gave a window of %d tokens; seq_len %d needs %d", len(w), seqLen, seqLen+1)
				default:
					copy(mb.inputs[b*seqLen:(b+1)*seqLen], w[:seqLen])
					copy(mb.targets[b*seqLen:(b+1)*seqLen], w[1:])
				}
			}
			if mb.err == nil {
				mb.pos = append(json.RawMessage(nil), src.Position()...) // a source may reuse its buffer
			}
			select {
			case p.ch <- mb:
			case <-p.stop:
				return
			}
			if mb.err != nil {
				return
			}
		}
	}()
	return p
}

// next waits for the next micro-batch and reports how long the step waited for it.
func (p *prefetcher) next() (microBatch, time.Duration) {
	start := time.Now()
	mb := <-p.ch
	return mb, time.Since(start)
}

// close stops the reader and waits for it to leave the source alone.
func (p *prefetcher) close() {
	close(p.stop)
	<-p.done
}
