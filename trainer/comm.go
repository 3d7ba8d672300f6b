package trainer

import (
	"errors"
	"fmt"
	"sync"
)

// Comm is the data-parallel group a run belongs to: Size ranks train one model, each on its
// share of every step's micro-batches, and sum what they computed. A recipe means the same
// on any group size: grad_accum counts the micro-batches of a step over all ranks (it must be
// a multiple of Size), so N ranks compute what one rank computes with grad_accum
// micro-batches, up to the order of the sums, and a checkpoint resumes on any group size.
//
// Every rank must call the reductions in the same order with buffers of the same lengths.
type Comm interface {
	Rank() int
	Size() int
	// AllReduceSum replaces each buffer, on every rank, by its element-wise sum over the ranks.
	AllReduceSum(bufs [][]float32) error
	// AllReduceSum64 does the same for a few float64 values (the step's loss sums and flags).
	AllReduceSum64(vals []float64) error
	// Abort tells the group that this rank stopped with err: the other ranks' pending and later
	// reductions return an error naming it instead of waiting for ever.
	Abort(err error)
}

// soloComm is the group of one rank.
type soloComm struct{}

func (soloComm) Rank() int                           { return 0 }
func (soloComm) Size() int                           { return 1 }
func (soloComm) AllReduceSum(bufs [][]float32) error { return nil }
func (soloComm) AllReduceSum64(vals []float64) error { return nil }
func (soloComm) Abort(error)                         {}

// LocalGroup returns n ranks of one process (one goroutine each, sharing memory). Sums run in
// rank order, so a group's results are the same on every run. It is the reference the device
// communicators are tested against, and what the CPU tests train with.
func LocalGroup(n int) []Comm {
	if n < 1 {
		panic(fmt.Sprintf("trainer: LocalGroup(%d): need at least one rank", n))
	}
	g := &localGroup{n: n, f32: make([][][]float32, n), f64: make([][]float64, n)}
	g.cond = sync.NewCond(&g.mu)
	out := make([]Comm, n)
	for r := range out {
		out[r] = &localRank{g: g, rank: r}
	}
	return out
}

type localGroup struct {
	n       int
	mu      sync.Mutex
	cond    *sync.Cond
	arrived int
	gen     uint64
	f32     [][][]float32 // each rank's buffers of the reduction in progress
	f64     [][]float64
	err     error // set by Abort or a mismatch; every later reduction fails with it
}

type localRank struct {
	g    *localGroup
	rank int
}

func (r *localRank) Rank() int { return r.rank }
func (r *localRank) Size() int { return r.g.n }

func (r *localRank) AllReduceSum(bufs [][]float32) error {
	return r.g.reduce(r.rank, bufs, nil)
}

func (r *localRank) AllReduceSum64(vals []float64) error {
	return r.g.reduce(r.rank, nil, vals)
}

func (r *localRank) Abort(err error) {
	if err == nil {
		err = errors.New("aborted")
	}
	g := r.g
	g.mu.Lock()
	if g.err == nil {
		g.err = fmt.Errorf("rank %d of %d stopped: %w", r.rank, g.n, err)
	}
	g.cond.Broadcast()
	g.mu.Unlock()
}

// reduce deposits one rank's buffers; the last rank to arrive sums them in rank order into
// every rank's buffers (the others are all waiting, so none is read meanwhile) and wakes them.
func (g *localGroup) reduce(rank int, f32 [][]float32, f64 []float64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return g.err
	}
	gen := g.gen
	g.f32[rank], g.f64[rank] = f32, f64
	g.arrived++
	if g.arrived == g.n {
		g.err = g.sum()
		g.arrived = 0
		g.gen++
		g.cond.Broadcast()
		return g.err
	}
	for g.gen == gen && g.err == nil {
		g.cond.Wait()
	}
	return g.err
}

func (g *localGroup) sum() error {
	for r := 1; r < g.n; r++ {
		if len(g.f32[r]) != len(g.f32[0]) || len(g.f64[r]) != len(g.f64[0]) {
			return fmt.Errorf("all-reduce: rank %d passed %d+%d buffers, rank 0 %d+%d", r, len(g.f32[r]), len(g.f64[r]), len(g.f32[0]), len(g.f64[0]))
		}
		for i := range g.f32[0] {
			if len(g.f32[r][i]) != len(g.f32[0][i]) {
				return fmt.Errorf("all-reduce: buffer %d has %d values on rank %d, %d on rank 0", i, len(g.f32[r][i]), r, len(g.f32[0][i]))
			}
		}
	}
	for i, b0 := range g.f32[0] {
		for j := range b0 {
			s := b0[j]
			for r := 1; r < g.n; r++ {
				s += g.f32[r][i][j]
			}
			for r := 0; r < g.n; r++ {
				g.f32[r][i][j] = s
			}
		}
	}
	for j := range g.f64[0] {
		s := g.f64[0][j]
		for r := 1; r < g.n; r++ {
			s += g.f64[r][j]
		}
		for r := 0; r < g.n; r++ {
			g.f64[r][j] = s
		}
	}
	return nil
}
