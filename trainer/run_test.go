package trainer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testRecipe: 3 zero-out steps, a 3-step ramp to CR 2 held for 4 steps, 3 fine-tune steps.
func testRecipe(t *testing.T, overrides ...string) Recipe {
	t.Helper()
	r, err := ParseRecipe([]byte(`
name: test
target_cr: 2
zero_out_steps: 3
ramp_steps: 3
retrofit_steps: 4
fine_tune_steps: 3
seq_len: 8
batch_size: 4
grad_accum: 2
lr: 0.05
warmup_steps: 2
weight_decay: 0.1
grad_clip: 0.5
checkpoint_every: 5
keep_checkpoints: 2
log_every: 3
seed: 11
`))
	if err == nil {
		err = r.ApplyOverrides(overrides)
	}
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const fakeV, fakeE = 7, 4

// zeroDecisionChannel is the fake model's end-of-stage-1 hook: it zeroes the embedding column
// that feeds the decision channel.
func zeroDecisionChannel(params []Param) error {
	emb := params[0]
	for v := 0; v < fakeV; v++ {
		emb.Value[v*fakeE+fakeE-1] = 0
	}
	return nil
}

type session struct {
	model  *fakeModel
	source *fakeSource
	opts   Options
	out    bytes.Buffer
}

// newSession is a fresh "process": a new model (initialised from initSeed), a new source at
// its start, the same run directory.
func newSession(t *testing.T, dir string, r Recipe, initSeed uint64) *session {
	s := &session{model: newFakeModel(fakeV, fakeE, initSeed), source: &fakeSource{V: fakeV, SeqLen: r.SeqLen}}
	s.opts = Options{RunDir: dir, Recipe: r, Model: s.model, Source: s.source, OnZeroOutEnd: zeroDecisionChannel,
		ModelConfig: map[string]int{"vocab": fakeV, "dim": fakeE}, Progress: &s.out}
	return s
}

func (s *session) run(t *testing.T, ctx context.Context) Result {
	t.Helper()
	res, err := Run(ctx, s.opts)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, s.out.String())
	}
	return res
}

func readMetrics(t *testing.T, dir string) []Metrics {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Metrics
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m Metrics
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("metrics line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func requireSameWeights(t *testing.T, a, b *fakeModel, what string) {
	t.Helper()
	pa, pb := a.Params(), b.Params()
	for i := range pa {
		for j := range pa[i].Value {
			if math.Float32bits(pa[i].Value[j]) != math.Float32bits(pb[i].Value[j]) {
				t.Fatalf("%s: %s[%d] = %v vs %v (not bit-identical)", what, pa[i].Name, j, pa[i].Value[j], pb[i].Value[j])
			}
		}
	}
}

func TestResumeIsBitExact(t *testing.T) {
	r := testRecipe(t)
	straight := newSession(t, t.TempDir(), r, 1)
	res := straight.run(t, context.Background())
	if !res.Done || res.Step != 10 || res.Checkpoint != "step-0000010" {
		t.Fatalf("straight run: %+v", res)
	}
	want := readMetrics(t, straight.opts.RunDir)

	// Stop at 3 (before the zero-out hook), 5 (a periodic checkpoint), 7 (mid-ramp).
	for _, stop := range []int{3, 5, 7} {
		dir := t.TempDir()
		first := newSession(t, dir, r, 1)
		first.opts.StopAfter = stop
		if res := first.run(t, context.Background()); res.Step != stop || res.Done {
			t.Fatalf("stop after %d: %+v", stop, res)
		}
		second := newSession(t, dir, r, 99) // different init: everything must come from the checkpoint
		second.opts.Resume = true
		if res := second.run(t, context.Background()); !res.Done || res.Step != 10 {
			t.Fatalf("resumed run: %+v", res)
		}
		requireSameWeights(t, straight.model, second.model, "resume after step "+string(rune('0'+stop)))
		got := readMetrics(t, dir)
		if len(got) != len(want) {
			t.Fatalf("resumed metrics have %d lines, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i].Step != want[i].Step || got[i].Loss != want[i].Loss || got[i].GradNorm != want[i].GradNorm || got[i].LR != want[i].LR {
				t.Fatalf("metrics line %d: %+v, straight run %+v", i, got[i], want[i])
			}
		}
		if !strings.Contains(second.out.String(), "resumed from step-") {
			t.Fatalf("no resume note in %q", second.out.String())
		}
	}
}

func TestCancelSavesAndResumesExactly(t *testing.T) {
	r := testRecipe(t)
	straight := newSession(t, t.TempDir(), r, 1)
	straight.run(t, context.Background())

	// Cancel while micro-batch 0 of step index 6 runs: the partial step is dropped and the
	// checkpoint holds 6 completed steps. Cancel during the last micro-batch: the step
	// completes and 7 are saved.
	for _, tc := range []struct{ step, micro, saved int }{{6, 0, 6}, {6, 1, 7}} {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		s := newSession(t, dir, r, 1)
		s.model.onStep = func(sc StepContext) {
			if sc.Step == tc.step && sc.MicroBatch == tc.micro {
				cancel()
			}
		}
		res := s.run(t, ctx)
		cancel()
		if !res.Interrupted || res.Step != tc.saved || res.Checkpoint != CheckpointName(tc.saved) {
			t.Fatalf("cancel at %d/%d: %+v", tc.step, tc.micro, res)
		}
		if !strings.Contains(s.out.String(), "interrupted at step") {
			t.Fatalf("progress %q lacks the interruption note", s.out.String())
		}
		again := newSession(t, dir, r, 2)
		again.opts.Resume = true
		again.run(t, context.Background())
		requireSameWeights(t, straight.model, again.model, "resume after cancel")
	}
}

func TestGradAccumulationMatchesFullBatch(t *testing.T) {
	full := newSession(t, t.TempDir(), testRecipe(t, "grad_accum=1"), 1)
	split := newSession(t, t.TempDir(), testRecipe(t, "grad_accum=2"), 1)
	full.model.noNoise, split.model.noNoise = true, true // noise is seeded per micro-batch
	full.run(t, context.Background())
	split.run(t, context.Background())
	pf, ps := full.model.Params(), split.model.Params()
	for i := range pf {
		for j := range pf[i].Value {
			a, b := float64(pf[i].Value[j]), float64(ps[i].Value[j])
			if math.Abs(a-b) > 1e-5*math.Max(1, math.Abs(a)) {
				t.Fatalf("%s[%d]: batch 4 gives %v, 2 micro-batches of 2 give %v", pf[i].Name, j, a, b)
			}
		}
	}
	mf, ms := readMetrics(t, full.opts.RunDir), readMetrics(t, split.opts.RunDir)
	for i := range mf {
		if math.Abs(mf[i].Loss-ms[i].Loss) > 1e-6 || math.Abs(mf[i].GradNorm-ms[i].GradNorm) > 1e-5*mf[i].GradNorm || mf[i].Tokens != ms[i].Tokens {
			t.Fatalf("step %d: full %+v, accumulated %+v", i+1, mf[i], ms[i])
		}
	}
}

func TestRunPassesScheduleAndWritesMetrics(t *testing.T) {
	r := testRecipe(t)
	s := newSession(t, t.TempDir(), r, 1)
	// A stale metrics file of an attempt that never reached a checkpoint is replaced.
	os.WriteFile(filepath.Join(s.opts.RunDir, "metrics.jsonl"), []byte(`{"step":1,"loss":9}`+"\n"), 0o644)
	hookCalls := 0
	s.opts.OnZeroOutEnd = func(p []Param) error {
		hookCalls++
		if n := len(s.model.calls); n != 2*r.ZeroOutSteps {
			t.Errorf("hook ran after %d Step calls, want %d (end of stage 1)", n, 2*r.ZeroOutSteps)
		}
		return zeroDecisionChannel(p)
	}
	s.run(t, context.Background())
	if hookCalls != 1 {
		t.Fatalf("zero-out hook ran %d times", hookCalls)
	}
	if len(s.model.calls) != 2*r.TotalSteps() {
		t.Fatalf("%d Step calls, want %d", len(s.model.calls), 2*r.TotalSteps())
	}
	for i, sc := range s.model.calls {
		step, mb := i/2, i%2
		want := r.PlanAt(step).Context
		want.MicroBatch, want.LocalMicroBatch, want.Seed = mb, mb, StepSeed(r.Seed, step, 0, mb)
		if sc != want {
			t.Fatalf("call %d: context %+v, want %+v", i, sc, want)
		}
	}
	ms := readMetrics(t, s.opts.RunDir)
	if len(ms) != 10 {
		t.Fatalf("%d metric lines", len(ms))
	}
	for i, m := range ms {
		plan := r.PlanAt(i)
		if m.Step != i+1 || m.LR != plan.LR || m.Stage != r.StageLabel(plan) || m.Tokens != r.TokensPerStep() || !(m.GradNorm > 0) || !(m.Elapsed > 0) {
			t.Fatalf("metrics %d: %+v", i, m)
		}
		if (m.TargetCR != nil) != plan.Context.DMC {
			t.Fatalf("metrics %d: target_cr %v in stage %s", i, m.TargetCR, m.Stage)
		}
		if m.TargetCR != nil && (*m.TargetCR != plan.TargetCR || m.AchievedCR == nil || math.Abs(*m.AchievedCR-1/(1-m.MeanAlpha)) > 1e-12) {
			t.Fatalf("metrics %d: target %v achieved %v mean α %v", i, *m.TargetCR, m.AchievedCR, m.MeanAlpha)
		}
	}
	if !(ms[len(ms)-1].LMLoss < ms[0].LMLoss) {
		t.Fatalf("LM loss did not decrease: %v → %v", ms[0].LMLoss, ms[len(ms)-1].LMLoss)
	}
	out := s.out.String()
	for _, want := range []string{"step 1/10 zero-out loss", "step 9/10 fine-tune", " cr ", "→2.00", "tok/s ETA", "step 10/10", "zero-out stage done at step 3"} {
		if !strings.Contains(out, want) {
			t.Errorf("progress output lacks %q:\n%s", want, out)
		}
	}
	for _, f := range []string{"recipe.yaml", "model.json"} {
		if _, err := os.Stat(filepath.Join(s.opts.RunDir, f)); err != nil {
			t.Errorf("run dir lacks %s", f)
		}
	}
	back, err := LoadRecipe(filepath.Join(s.opts.RunDir, "recipe.yaml"))
	if err != nil || back != r {
		t.Fatalf("resolved recipe in the run dir: %+v, %v", back, err)
	}
}

func TestZeroOutHookResetsMomentsOfChangedWeights(t *testing.T) {
	r := testRecipe(t)
	s := newSession(t, t.TempDir(), r, 1)
	tr, err := newRun(s.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	for i := range tr.opt.M {
		for j := range tr.opt.M[i] {
			tr.opt.M[i][j], tr.opt.V[i][j] = 1, 2
		}
	}
	if err := tr.applyZeroOutHook(); err != nil {
		t.Fatal(err)
	}
	for v := 0; v < fakeV; v++ {
		for e := 0; e < fakeE; e++ {
			j := v*fakeE + e
			reset := tr.opt.M[0][j] == 0 && tr.opt.V[0][j] == 0
			if reset != (e == fakeE-1) {
				t.Fatalf("emb[%d,%d]: moments %v/%v; only the zeroed channel's should be reset", v, e, tr.opt.M[0][j], tr.opt.V[0][j])
			}
		}
	}
	if tr.opt.M[2][0] != 1 {
		t.Fatal("moments of an untouched parameter were reset")
	}
}

func TestControlRunNeverTurnsDMCOn(t *testing.T) {
	s := newSession(t, t.TempDir(), testRecipe(t, "mode=control"), 1)
	s.opts.OnZeroOutEnd = func([]Param) error { t.Fatal("zero-out hook ran in a control run"); return nil }
	s.run(t, context.Background())
	for _, sc := range s.model.calls {
		if sc.DMC || sc.ZeroOut != 1 || sc.CRWeight != 0 {
			t.Fatalf("control run step context %+v", sc)
		}
	}
	for _, m := range readMetrics(t, s.opts.RunDir) {
		if m.TargetCR != nil || m.AchievedCR != nil {
			t.Fatalf("control metrics report compression: %+v", m)
		}
	}
}

func TestNaNLossStopsAndKeepsLastGoodCheckpoint(t *testing.T) {
	dir := t.TempDir()
	s := newSession(t, dir, testRecipe(t), 1)
	s.model.nanAt = 7
	_, err := Run(context.Background(), s.opts)
	if err == nil || !strings.Contains(err.Error(), "step 8: loss is NaN") || !strings.Contains(err.Error(), "last good checkpoint is step-0000005") {
		t.Fatalf("error %v", err)
	}
	latest, _ := os.ReadFile(filepath.Join(dir, "checkpoints", "latest"))
	if string(latest) != "step-0000005\n" {
		t.Fatalf("latest = %q after divergence", latest)
	}
	// Resuming from it (with the fault gone) completes the run.
	again := newSession(t, dir, testRecipe(t), 1)
	again.opts.Resume = true
	if res := again.run(t, context.Background()); !res.Done {
		t.Fatalf("%+v", res)
	}
}

func TestRunUserErrors(t *testing.T) {
	r := testRecipe(t)
	dir := t.TempDir()
	newSession(t, dir, r, 1).run(t, context.Background())

	tests := []struct {
		name  string
		setup func(s *session)
		want  string
	}{
		{"fresh run into a used dir", func(s *session) {}, "already has checkpoints"},
		{"resume with another model", func(s *session) {
			s.opts.Resume, s.opts.ModelConfig = true, map[string]int{"vocab": 8}
		}, "another model config"},
		{"invalid recipe", func(s *session) { s.opts.Recipe.TargetCR = 0.5 }, "target CR must be ≥ 1"},
		{"nothing to resume", func(s *session) { s.opts.Resume, s.opts.RunDir = true, t.TempDir() }, "no checkpoint to resume from"},
		{"data runs out", func(s *session) { s.opts.RunDir, s.source.limit = t.TempDir(), 12 }, "the data ran out at step 4"},
		{"wrong window length", func(s *session) { s.opts.RunDir, s.source.SeqLen = t.TempDir(), 5 }, "window of 6 tokens; seq_len 8 needs 9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession(t, dir, r, 1)
			tc.setup(s)
			_, err := Run(context.Background(), s.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestFullDiskDuringRunStopsWithInstructions(t *testing.T) {
	dir := t.TempDir()
	s := newSession(t, dir, testRecipe(t), 1)
	fsys := newFaultFS()
	s.opts.FS = fsys
	s.model.onStep = func(sc StepContext) {
		if sc.Step == 6 {
			fsys.budget = 100 // the disk fills up before the step-10 checkpoint
		}
	}
	_, err := Run(context.Background(), s.opts)
	if !errors.Is(err, errENOSPC()) || !strings.Contains(err.Error(), "step-0000005, is intact") || !strings.Contains(err.Error(), "resume the run") {
		t.Fatalf("error %v", err)
	}
	checkLatestStep(t, dir, 5)
}

func checkLatestStep(t *testing.T, dir string, step int) {
	t.Helper()
	c, err := (&CheckpointStore{FS: OSFS{}, Dir: filepath.Join(dir, "checkpoints")}).OpenLatest(false, io.Discard)
	if err != nil || c.State.Step != step {
		t.Fatalf("latest checkpoint: %+v, %v; want step %d", c, err, step)
	}
}

func TestHeldOutEvaluation(t *testing.T) {
	r := testRecipe(t, "eval_every=5", "eval_batches=2")
	s := newSession(t, t.TempDir(), r, 1)
	held := &fakeSource{V: fakeV, SeqLen: r.SeqLen, k: 1000}
	s.opts.Eval = held
	s.run(t, context.Background())
	if held.k != 1000+2*r.MicroBatchSize() {
		t.Fatalf("held-out source at window %d: each evaluation should read the same %d windows", held.k, 2*r.MicroBatchSize())
	}
	ms := readMetrics(t, s.opts.RunDir)
	for _, m := range ms {
		if (m.EvalLoss != nil) != (m.Step%5 == 0) {
			t.Fatalf("step %d: eval_loss %v", m.Step, m.EvalLoss)
		}
	}
	// Step 10's evaluation is Forward with the step's schedule, hard decisions, no noise.
	held.k = 1000
	sc := r.PlanAt(9).Context
	sc.Hard = true
	want, err := Evaluate(s.model, held, r.MicroBatchSize(), r.SeqLen, 2, sc)
	if err != nil {
		t.Fatal(err)
	}
	last := ms[len(ms)-1]
	if *last.EvalLoss != want.Loss || *last.EvalLMLoss != want.LM || last.EvalAchievedCR == nil || *last.EvalAchievedCR != want.AchievedCR() {
		t.Fatalf("eval metrics %v/%v/%v, want %+v", *last.EvalLoss, *last.EvalLMLoss, last.EvalAchievedCR, want)
	}
	if want.Loss == 0 || want.Batches != 2 || want.Tokens != 2*r.MicroBatchSize()*r.SeqLen {
		t.Fatalf("evaluation %+v", want)
	}
	if !strings.Contains(s.out.String(), "eval at step 10: loss") {
		t.Fatalf("progress lacks the evaluation line:\n%s", s.out.String())
	}
	// An empty held-out set is an error, not a zero loss.
	if _, err := Evaluate(s.model, &fakeSource{V: fakeV, SeqLen: r.SeqLen, limit: 1}, 2, r.SeqLen, 2, sc); err == nil || !strings.Contains(err.Error(), "evaluation data is empty") {
		t.Fatalf("empty evaluation: %v", err)
	}
}

// A corrupt newest checkpoint does not stop a resume: the run continues from the newest one
// that verifies (bit-exactly, so the final weights equal an uninterrupted run's), the corrupt
// one is set aside with a warning naming it, and "latest" never names it again.
func TestResumeFallsBackPastCorruptCheckpoint(t *testing.T) {
	r := testRecipe(t, "checkpoint_every=2", "keep_checkpoints=3")
	straight := newSession(t, t.TempDir(), r, 1)
	straight.run(t, context.Background())

	dir := t.TempDir()
	first := newSession(t, dir, r, 1)
	first.opts.StopAfter = 6
	first.run(t, context.Background())
	w := filepath.Join(dir, "checkpoints", "step-0000006", "weights.safetensors")
	b, err := os.ReadFile(w)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-3] ^= 0x10
	os.WriteFile(w, b, 0o644)

	strict := newSession(t, dir, r, 99)
	strict.opts.Resume, strict.opts.ResumeStrict = true, true
	if _, err := Run(context.Background(), strict.opts); err == nil || !strings.Contains(err.Error(), "continues from step 4") {
		t.Fatalf("strict resume past a corrupt checkpoint: %v", err)
	}

	second := newSession(t, dir, r, 99)
	second.opts.Resume = true
	second.opts.StopAfter = 5
	if res := second.run(t, context.Background()); res.Step != 5 {
		t.Fatalf("resumed run stopped at %d, want 5", res.Step)
	}
	log := second.out.String()
	for _, want := range []string{"checkpoint step-0000006 is corrupt", "using step-0000004", "resumed from step-0000004 (step 4)", "corrupt-step-0000006"} {
		if !strings.Contains(log, want) {
			t.Errorf("resume log lacks %q:\n%s", want, log)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "checkpoints", "corrupt-step-0000006")); err != nil {
		t.Errorf("the corrupt checkpoint was not kept aside: %v", err)
	}
	checkLatestStep(t, dir, 5)

	third := newSession(t, dir, r, 7)
	third.opts.Resume = true
	if res := third.run(t, context.Background()); !res.Done || res.Step != 10 {
		t.Fatalf("final resume: %+v", res)
	}
	requireSameWeights(t, straight.model, third.model, "resume past a corrupt checkpoint")
	checkLatestStep(t, dir, 10)
}

// Pruning never removes the checkpoint "latest" names, even when newer (stale) ones exist.
func TestPruneKeepsLatest(t *testing.T) {
	dir := t.TempDir()
	s := &CheckpointStore{FS: OSFS{}, Dir: dir, Keep: 1}
	for _, step := range []int{8, 4} { // 8 is stale: the run went back to 4
		_, _, in := ckptFixture(step)
		if _, err := s.Save(in); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Open("step-0000004"); err != nil {
		t.Fatalf("latest was pruned: %v", err)
	}
	if name, err := s.readLatest(); err != nil || name != "step-0000004" {
		t.Fatalf("latest names %q (%v)", name, err)
	}
}
