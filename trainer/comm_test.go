package trainer

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dmc-project/dmc/trainer/step"
)

func TestLocalGroupSumsInRankOrder(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		comms := LocalGroup(n)
		got := make([][][]float32, n)
		got64 := make([][]float64, n)
		var wg sync.WaitGroup
		for r, c := range comms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for round := 0; round < 3; round++ { // the group is reusable
					b := [][]float32{{float32(r + 1), float32(round)}, {float32(10 * r)}}
					v := []float64{float64(r), 0.5}
					if err := c.AllReduceSum(b); err != nil {
						t.Error(err)
					}
					if err := c.AllReduceSum64(v); err != nil {
						t.Error(err)
					}
					got[r], got64[r] = b, v
				}
			}()
		}
		wg.Wait()
		tri := float32(n * (n + 1) / 2)
		for r := 0; r < n; r++ {
			want := [][]float32{{tri, float32(2 * n)}, {10 * (tri - float32(n))}}
			for i := range want {
				for j := range want[i] {
					if got[r][i][j] != want[i][j] {
						t.Fatalf("n=%d rank %d buffer %d[%d] = %v, want %v", n, r, i, j, got[r][i][j], want[i][j])
					}
				}
			}
			if got64[r][0] != float64(n*(n-1)/2) || got64[r][1] != 0.5*float64(n) {
				t.Fatalf("n=%d rank %d: %v", n, r, got64[r])
			}
		}
	}
}

func TestLocalGroupMismatchAndAbort(t *testing.T) {
	comms := LocalGroup(2)
	errs := make(chan error, 2)
	go func() { errs <- comms[0].AllReduceSum([][]float32{{1, 2}}) }()
	go func() { errs <- comms[1].AllReduceSum([][]float32{{1}}) }()
	for i := 0; i < 2; i++ {
		if err := <-errs; err == nil || !strings.Contains(err.Error(), "buffer 0 has 1 values on rank 1") {
			t.Fatalf("mismatched lengths: %v", err)
		}
	}

	comms = LocalGroup(3)
	done := make(chan error)
	go func() { done <- comms[0].AllReduceSum64([]float64{1}) }()
	time.Sleep(10 * time.Millisecond) // rank 0 waits for the others
	comms[2].Abort(errors.New("disk full"))
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "rank 2 of 3 stopped: disk full") {
			t.Fatalf("waiting rank got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting rank was not woken by Abort")
	}
	if err := comms[1].AllReduceSum64(nil); err == nil {
		t.Fatal("a reduction after Abort succeeded")
	}
}

// groupRun runs n ranks of one recipe over one run directory, each with its own fake model
// (the same initial weights) and source, and returns rank 0's session and every rank's result.
func groupRun(t *testing.T, dir string, r Recipe, n int, prep func(rank int, s *session)) (*session, []Result, []error) {
	t.Helper()
	comms := LocalGroup(n)
	sessions := make([]*session, n)
	res, errs := make([]Result, n), make([]error, n)
	var wg sync.WaitGroup
	for rank := range comms {
		s := newSession(t, dir, r, 1)
		s.opts.Comm = comms[rank]
		if prep != nil {
			prep(rank, s)
		}
		sessions[rank] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[rank], errs[rank] = Run(context.Background(), s.opts)
		}()
	}
	wg.Wait()
	for rank := 1; rank < n; rank++ {
		if errs[rank] == nil {
			requireSameWeights(t, sessions[0].model, sessions[rank].model, "ranks 0 and "+string(rune('0'+rank)))
		}
	}
	return sessions[0], res, errs
}

func requireCloseRuns(t *testing.T, what string, want, got *session, tol float64) {
	t.Helper()
	mw, mg := readMetrics(t, want.opts.RunDir), readMetrics(t, got.opts.RunDir)
	if len(mw) != len(mg) {
		t.Fatalf("%s: %d metric lines, want %d", what, len(mg), len(mw))
	}
	rel := func(a, b float64) float64 { return math.Abs(a-b) / math.Max(math.Abs(a), 1e-12) }
	for i := range mw {
		if rel(mw[i].Loss, mg[i].Loss) > tol || rel(mw[i].GradNorm, mg[i].GradNorm) > tol || mw[i].Tokens != mg[i].Tokens || rel(mw[i].MeanAlpha, mg[i].MeanAlpha) > tol {
			t.Fatalf("%s, step %d: one rank %+v, group %+v", what, i+1, mw[i], mg[i])
		}
	}
	pw, pg := want.model.Params(), got.model.Params()
	for i := range pw {
		for j := range pw[i].Value {
			a, b := float64(pw[i].Value[j]), float64(pg[i].Value[j])
			if math.Abs(a-b) > 10*tol*math.Max(1, math.Abs(a)) {
				t.Fatalf("%s: %s[%d] = %v, one rank %v", what, pw[i].Name, j, b, a)
			}
		}
	}
}

// N ranks of a recipe with grad_accum = 4 compute what one rank computes with the same
// recipe: the same micro-batches, the same Gumbel noise, the mean gradient (up to the order of
// the sums), with the noise on.
func TestDataParallelEqualsGradientAccumulation(t *testing.T) {
	r := testRecipe(t, "grad_accum=4")
	one := newSession(t, t.TempDir(), r, 1)
	one.run(t, context.Background())
	for _, n := range []int{2, 4} {
		var calls [][]StepContext
		var mu sync.Mutex
		s0, res, errs := groupRun(t, t.TempDir(), r, n, func(rank int, s *session) {
			mu.Lock()
			calls = append(calls, nil)
			mu.Unlock()
			s.model.onStep = func(sc StepContext) {
				mu.Lock()
				calls[rank] = append(calls[rank], sc)
				mu.Unlock()
			}
		})
		for rank, err := range errs {
			if err != nil {
				t.Fatalf("%d ranks, rank %d: %v", n, rank, err)
			}
			if !res[rank].Done {
				t.Fatalf("%d ranks, rank %d: not done: %+v", n, rank, res[rank])
			}
		}
		requireCloseRuns(t, "grad_accum 4 on "+string(rune('0'+n))+" ranks", one, s0, 1e-6)
		// Each rank trained on its own share, with the noise key of the micro-batch's place in the step.
		per := 4 / n
		for rank, cs := range calls {
			if len(cs) != per*r.TotalSteps() {
				t.Fatalf("%d ranks: rank %d made %d Step calls, want %d", n, rank, len(cs), per*r.TotalSteps())
			}
			for i, sc := range cs {
				step, mb := i/per, i%per
				g := rank*per + mb
				if sc.Step != step || sc.MicroBatch != g || sc.LocalMicroBatch != mb || sc.Seed != StepSeed(r.Seed, step, 0, g) {
					t.Fatalf("%d ranks: rank %d call %d: %+v (want step %d, micro-batch %d, local %d)", n, rank, i, sc, step, g, mb)
				}
			}
		}
	}
}

// A checkpoint of a group resumes on another group size, and the run ends where one rank ends.
func TestDataParallelResumesOnAnotherGroupSize(t *testing.T) {
	r := testRecipe(t, "grad_accum=4")
	one := newSession(t, t.TempDir(), r, 1)
	one.run(t, context.Background())

	dir := t.TempDir()
	_, res, errs := groupRun(t, dir, r, 2, func(_ int, s *session) { s.opts.StopAfter = 5 })
	if errs[0] != nil || errs[1] != nil || res[0].Step != 5 || res[1].Step != 5 {
		t.Fatalf("2 ranks to step 5: %+v %v", res, errs)
	}
	s0, res, errs := groupRun(t, dir, r, 4, func(_ int, s *session) { s.opts.Resume = true; s.opts.StopAfter = 8 })
	if errs[0] != nil || res[0].Step != 8 {
		t.Fatalf("4 ranks from step 5 to 8: %+v %v\n%s", res, errs, s0.out.String())
	}
	last := newSession(t, dir, r, 1)
	last.opts.Resume = true
	if res := last.run(t, context.Background()); !res.Done {
		t.Fatalf("one rank from step 8: %+v", res)
	}
	requireCloseRuns(t, "2 ranks, then 4, then 1", one, last, 1e-6)
}

// A rank whose context is cancelled stops the whole group after the same step, with one
// checkpoint of it; a rank that fails stops the others with an error naming it.
func TestDataParallelStopsTogether(t *testing.T) {
	r := testRecipe(t, "grad_accum=4")
	dir := t.TempDir()
	comms := LocalGroup(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	res, errs := make([]Result, 2), make([]error, 2)
	for rank := range comms {
		s := newSession(t, dir, r, 1)
		s.opts.Comm = comms[rank]
		c := context.Background()
		if rank == 1 {
			c = ctx
			s.model.onStep = func(sc StepContext) {
				if sc.Step == 6 {
					cancel()
				}
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[rank], errs[rank] = Run(c, s.opts)
		}()
	}
	wg.Wait()
	for rank := range res {
		if errs[rank] != nil || !res[rank].Interrupted || res[rank].Step != 7 {
			t.Fatalf("rank %d: %+v, %v (want interrupted after step 7)", rank, res[rank], errs[rank])
		}
	}
	checkLatestStep(t, dir, 7)

	_, _, errs = groupRun(t, t.TempDir(), r, 2, func(rank int, s *session) {
		if rank == 1 {
			s.source.limit = 4 * r.MicroBatchSize() * 3 // runs out in step 4
		}
	})
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "the data ran out at step 4") {
		t.Fatalf("rank 1: %v", errs[1])
	}
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 1 of 2 stopped") {
		t.Fatalf("rank 0 should stop with rank 1's failure: %v", errs[0])
	}
}

func TestDataParallelUserErrors(t *testing.T) {
	r := testRecipe(t, "grad_accum=2")
	s := newSession(t, t.TempDir(), r, 1)
	s.opts.Comm = LocalGroup(4)[0]
	_, err := Run(context.Background(), s.opts)
	if err == nil || !strings.Contains(err.Error(), "grad_accum 2 counts the micro-batches of a step over all 4 ranks") ||
		!strings.Contains(err.Error(), "set grad_accum=4, or use 2 ranks") {
		t.Fatalf("grad_accum not a multiple of the ranks: %v", err)
	}
}

// groupOffloadModel is a device model in a data-parallel group: it sums its accumulators over
// the group at the start of Update, as graph/device.Model does with NCCL.
type groupOffloadModel struct {
	*offloadModel
	comm Comm
}

var _ step.DataParallel = groupOffloadModel{}

func (m groupOffloadModel) GroupSize() int { return m.comm.Size() }

func (m groupOffloadModel) Update(h step.AdamW, micro int, maxNorm, lr float64) (float64, error) {
	if err := m.comm.AllReduceSum(m.acc); err != nil {
		return 0, err
	}
	return m.offloadModel.Update(h, micro, maxNorm, lr)
}

// Device models sum their own gradients in Update; the trainer then only sums the losses.
func TestDataParallelDeviceModels(t *testing.T) {
	r := testRecipe(t, "grad_accum=4")
	one := newSession(t, t.TempDir(), r, 1)
	one.run(t, context.Background())

	dir := t.TempDir()
	comms := LocalGroup(2)
	models := make([]*offloadModel, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for rank := range comms {
		s := newSession(t, dir, r, 1)
		models[rank] = newOffloadModel(1)
		s.opts.Model, s.opts.Comm = groupOffloadModel{models[rank], comms[rank]}, comms[rank]
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[rank] = Run(context.Background(), s.opts)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	pw, pg := one.model.Params(), models[0].dev.Params()
	for i := range pw {
		for j := range pw[i].Value {
			if a, b := float64(pw[i].Value[j]), float64(pg[i].Value[j]); math.Abs(a-b) > 1e-5*math.Max(1, math.Abs(a)) {
				t.Fatalf("%s[%d]: one rank %v, 2 device ranks %v", pw[i].Name, j, a, b)
			}
		}
	}
	mw, mg := readMetrics(t, one.opts.RunDir), readMetrics(t, dir)
	for i := range mw {
		if math.Abs(mw[i].Loss-mg[i].Loss) > 1e-6*math.Abs(mw[i].Loss) || mw[i].Tokens != mg[i].Tokens {
			t.Fatalf("step %d: one rank %+v, 2 device ranks %+v", i+1, mw[i], mg[i])
		}
	}

	// A device model that does not sum over the group is refused.
	s := newSession(t, t.TempDir(), r, 1)
	s.opts.Model, s.opts.Comm = newOffloadModel(1), LocalGroup(2)[0]
	if _, err := Run(context.Background(), s.opts); err == nil || !strings.Contains(err.Error(), "must sum its gradients over the same group") {
		t.Fatalf("a device model outside the group: %v", err)
	}
}
