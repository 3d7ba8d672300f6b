package trainer

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// slowModel makes every step take a while, so that the reader has time to run ahead.
type slowModel struct {
	*fakeModel
	src   *countingSource
	ahead atomic.Int64 // the most windows read beyond those the steps consumed
	steps int
}

func (m *slowModel) Step(b Batch, sc StepContext) (Losses, error) {
	m.steps++
	time.Sleep(3 * time.Millisecond)
	if d := m.src.reads.Load() - int64(m.steps*b.BatchSize); d > m.ahead.Load() {
		m.ahead.Store(d)
	}
	return m.fakeModel.Step(b, sc)
}

type countingSource struct {
	*fakeSource
	reads atomic.Int64
}

func (s *countingSource) Next() ([]int, error) {
	s.reads.Add(1)
	return s.fakeSource.Next()
}

// The reader prepares the next micro-batches while a step runs, and metrics record the wait.
func TestPrefetchReadsAheadOfTheStep(t *testing.T) {
	r := testRecipe(t, "grad_accum=1")
	s := newSession(t, t.TempDir(), r, 1)
	src := &countingSource{fakeSource: s.source}
	m := &slowModel{fakeModel: s.model, src: src}
	s.opts.Model, s.opts.Source = m, src
	s.run(t, context.Background())
	if m.ahead.Load() < int64(r.MicroBatchSize()) {
		t.Errorf("the reader was at most %d windows ahead of the steps; want at least one micro-batch (%d)", m.ahead.Load(), r.MicroBatchSize())
	}
	for _, x := range readMetrics(t, s.opts.RunDir) {
		if x.DataWait < 0 || x.DataWait > 1 {
			t.Fatalf("step %d: data wait %v s", x.Step, x.DataWait)
		}
	}
}
