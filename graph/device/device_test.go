//go:build dmc_cuda

package device

// Parity of the GPU executor with the CPU graph it executes: the losses and every parameter
// gradient of one micro-batch (plain, stage 1, DMC soft and hard, distillation, gradient
// accumulation), on random GQA models and on the real stories260K; then whole training runs.
// Skips without a GPU; the planner tests run without one.
//
//	go test -c -tags dmc_cuda -o device.test ./graph/device && ./device.test -test.v

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/internal/dmctest"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
	"github.com/dmc-project/dmc/trainer/step"
)

type stepCase struct {
	name string
	sc   step.Context
}

var stepCases = []stepCase{
	{"vanilla", step.Context{ZeroOut: 1}},
	{"stage1", step.Context{ZeroOut: 0.3}},
	{"dmc-soft", step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 3, Seed: 77, Step: 5}},
	{"dmc-hard", step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.75, CRWeight: 1, Hard: true}},
	{"dmc-distill", step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 3, Seed: 3, DistillWeight: 0.5}},
}

// compareStep runs one micro-batch on the CPU graph and on the device and compares the losses
// and all gradients; then a second micro-batch (LocalMicroBatch 1) must add to the first.
func compareStep(t *testing.T, w *model.Weights, dc dmc.Config, B, T int, teacher bool, prec precision) {
	tol, ltol := prec.grad, prec.loss
	var tw *model.Weights
	if teacher {
		tw = w
	}
	cpu, err := graph.NewExec(w, dc, B, T, graph.Options[float32]{Teacher: tw})
	if err != nil {
		t.Fatal(err)
	}
	dg, err := graph.NewExec(w, dc, B, T, graph.Options[float32]{Teacher: tw})
	if err != nil {
		t.Fatal(err)
	}
	dm, err := New(dg, Options{FP32GEMM: prec.fp32})
	if err != nil {
		t.Skipf("no usable GPU: %v", err)
	}
	defer dm.Close()
	rng := rand.New(rand.NewPCG(uint64(B*T), 5))
	c := w.Config
	for _, tc := range stepCases {
		if tc.sc.DistillWeight > 0 && !teacher {
			continue
		}
		b := batchOf(rng, B, T, c.VocabSize)
		lc, err := cpu.Step(b, tc.sc)
		if err != nil {
			t.Fatalf("%s: CPU: %v", tc.name, err)
		}
		ld, err := dm.Step(b, tc.sc)
		if err != nil {
			t.Fatalf("%s: GPU: %v", tc.name, err)
		}
		for _, x := range []struct {
			what     string
			got, ref float64
		}{{"loss", ld.Loss, lc.Loss}, {"lm", ld.LM, lc.LM}, {"cr", ld.CR, lc.CR}, {"mean α", ld.MeanAlpha, lc.MeanAlpha}, {"kd", ld.KD, lc.KD}} {
			tol := ltol * math.Max(1, math.Abs(x.ref))
			if x.what == "mean α" {
				tol = prec.alpha
			} else if x.what == "cr" {
				tol = max(tol, prec.alpha) // the CR loss is a hinge on the mean hard decision
			}
			if math.Abs(x.got-x.ref) > tol {
				t.Errorf("%s: %s %.6g on the GPU, %.6g on the CPU", tc.name, x.what, x.got, x.ref)
			}
		}
		if err := dm.HostGrads(); err != nil {
			t.Fatal(err)
		}
		pc, pd := cpu.Params(), dm.Params()
		worst, worstName := 0.0, ""
		for i := range pc {
			e := relErr(pd[i].Grad, pc[i].Grad)
			if e > worst {
				worst, worstName = e, pc[i].Name
			}
			if !(e <= tol) {
				t.Errorf("%s: gradient of %s: relative error %.3g (tolerance %.0e)", tc.name, pc[i].Name, e, tol)
			}
		}
		t.Logf("%s: loss %.5f vs %.5f, worst gradient %s rel %.2e", tc.name, ld.Loss, lc.Loss, worstName, worst)
		// Accumulation: a second micro-batch adds its gradient to the first.
		first := make([][]float32, len(pd))
		for i := range pd {
			first[i] = append([]float32(nil), pd[i].Grad...)
		}
		b2 := batchOf(rng, B, T, c.VocabSize)
		sc2 := tc.sc
		sc2.MicroBatch, sc2.LocalMicroBatch = 1, 1
		if _, err := cpu.Step(b2, sc2); err != nil {
			t.Fatal(err)
		}
		if _, err := dm.Step(b2, sc2); err != nil {
			t.Fatal(err)
		}
		if err := dm.HostGrads(); err != nil {
			t.Fatal(err)
		}
		for i := range pc {
			want := make([]float32, len(first[i]))
			for j := range want {
				want[j] = first[i][j] + pc[i].Grad[j]
			}
			if e := relErr(pd[i].Grad, want); !(e <= tol) {
				t.Errorf("%s: accumulated gradient of %s: relative error %.3g", tc.name, pc[i].Name, e)
			}
		}
	}
}

// precision is an executor mode with the agreement it must reach: fp32 GEMMs differ from the
// CPU only in summation order (measured on the H200: gradients within 1.4e-5); bf16 GEMM
// operands (8 bits of mantissa) move the gradients of these deliberately sharp random models
// by several percent, and soft decisions at τ = 0.1 amplify that up to 30% on single tensors,
// so the bf16 rows only guard against gross errors; the fp32 rows prove the executor.
type precision struct {
	name       string
	fp32       bool
	loss, grad float64
	// alpha is the absolute tolerance of the mean hard decision: bf16 rounding may flip a
	// decision whose logit is within rounding of 0 (one of the 140 of a step here moves it 0.007).
	alpha float64
}

var precisions = []precision{{"fp32", true, 1e-5, 1e-3, 1e-6}, {"bf16", false, 5e-3, 0.5, 0.02}}

func TestStepMatchesCPURandom(t *testing.T) {
	for _, sh := range []struct {
		dim, layers, hq, hkv, vocab, B, T int
		tie, teacher                      bool
	}{
		{64, 2, 4, 2, 50, 2, 13, false, true},   // D = 16, GQA, odd length
		{256, 2, 4, 1, 300, 1, 70, true, false}, // D = 64, MQA, tied embeddings
		{512, 1, 4, 2, 128, 2, 33, false, true}, // D = 128
	} {
		for _, prec := range precisions {
			t.Run(fmt.Sprintf("%s_d%d_L%d_H%d-%d_T%d", prec.name, sh.dim, sh.layers, sh.hq, sh.hkv, sh.T), func(t *testing.T) {
				w, dc := randomModel(t, sh.dim, sh.layers, sh.hq, sh.hkv, sh.vocab, 128, sh.tie)
				compareStep(t, w, dc, sh.B, sh.T, sh.teacher, prec)
			})
		}
	}
}

func TestStepMatchesCPUStories260K(t *testing.T) {
	p := dmctest.Stories260K(t)
	w := model.Convert[float32](p)
	dc := dmc.DefaultConfig()
	dc.DecisionChannel, dc.DecisionOffset = 0, 2
	for _, prec := range precisions {
		t.Run(prec.name, func(t *testing.T) { compareStep(t, w, dc, 2, 128, true, prec) })
	}
}

// The same inputs give the same bits (no atomics, fixed GEMM algorithms).
// trainFew runs 3 steps of 2 micro-batches with distillation (DMC, bf16 GEMMs) and returns
// every loss, then the weights and first moments.
func trainFew(t *testing.T, w *model.Weights, dc dmc.Config, opt Options) ([]float32, [][]float32) {
	t.Helper()
	run := func() ([]float32, [][]float32) {
		g, err := graph.NewExec(w, dc, 2, 40, graph.Options[float32]{Teacher: w})
		if err != nil {
			t.Fatal(err)
		}
		dm, err := New(g, opt)
		if err != nil {
			t.Skipf("no usable GPU: %v", err)
		}
		defer dm.Close()
		rng := rand.New(rand.NewPCG(1, 2))
		var losses []float32
		decay := make([]bool, len(dm.Params()))
		for i := range decay {
			decay[i] = len(dm.Params()[i].Shape) == 2
		}
		for s := 0; s < 3; s++ {
			for mb := 0; mb < 2; mb++ {
				l, err := dm.Step(batchOf(rng, 2, 40, 97), step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 3, Seed: 9,
					Step: s, MicroBatch: mb, LocalMicroBatch: mb, DistillWeight: 0.5})
				if err != nil {
					t.Fatal(err)
				}
				losses = append(losses, float32(l.Loss))
			}
			n, err := dm.Update(step.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Decay: decay, T: s + 1}, 2, 1, 1e-3)
			if err != nil || !finite(n) {
				t.Fatalf("update: norm %v, %v", n, err)
			}
		}
		m := make([][]float32, len(dm.Params()))
		v := make([][]float32, len(dm.Params()))
		var out [][]float32
		for i, p := range dm.Params() {
			m[i], v[i] = make([]float32, len(p.Value)), make([]float32, len(p.Value))
		}
		if err := dm.Pull(m, v); err != nil {
			t.Fatal(err)
		}
		for _, p := range dm.Params() {
			out = append(out, append([]float32(nil), p.Value...))
		}
		return losses, append(out, m...)
	}
	return run()
}

// requireSameBits fails unless two trainFew results are bit-identical.
func requireSameBits(t *testing.T, what string, l1, l2 []float32, w1, w2 [][]float32) {
	t.Helper()
	for i := range l1 {
		if math.Float32bits(l1[i]) != math.Float32bits(l2[i]) {
			t.Fatalf("%s: loss %d: %v then %v", what, i, l1[i], l2[i])
		}
	}
	for i := range w1 {
		for j := range w1[i] {
			if math.Float32bits(w1[i][j]) != math.Float32bits(w2[i][j]) {
				t.Fatalf("%s: tensor %d element %d: %v then %v", what, i, j, w1[i][j], w2[i][j])
			}
		}
	}
}

func TestStepIsDeterministic(t *testing.T) {
	w, dc := randomModel(t, 128, 2, 4, 2, 97, 64, false)
	l1, w1 := trainFew(t, w, dc, Options{})
	l2, w2 := trainFew(t, w, dc, Options{})
	requireSameBits(t, "two runs", l1, l2, w1, w2)
}

// The schedule switches that claim the same bits as the plain schedule (a producer writing
// the bf16 copy a cast would, one-pass RMSNorm gradients, shared attention shadows, fp32
// values that die early) keep every loss, weight and moment bit for bit, alone and together,
// with and without recomputation: the planner's own tests replay schedules symbolically,
// this runs them.
func TestPlanSwitchesKeepTheBits(t *testing.T) {
	w, dc := randomModel(t, 128, 2, 4, 2, 97, 64, false)
	for _, recompute := range []bool{false, true} {
		base := PlanSwitches{FoldSums: true}
		l0, w0 := trainFew(t, w, dc, Options{Recompute: recompute, Switches: &base})
		all := base
		all.GradShadows, all.ShadowOnly, all.PairNormGrads, all.AttnShadows = true, true, true, true
		for _, c := range []struct {
			name string
			set  func(*PlanSwitches)
		}{
			{"gradShadows", func(s *PlanSwitches) { s.GradShadows = true }},
			{"shadowOnly", func(s *PlanSwitches) { s.ShadowOnly = true }},
			{"pairNormGrads", func(s *PlanSwitches) { s.PairNormGrads = true }},
			{"attnShadows", func(s *PlanSwitches) { s.AttnShadows = true }},
			{"all", func(s *PlanSwitches) { *s = all }},
		} {
			sw := base
			c.set(&sw)
			l, ws := trainFew(t, w, dc, Options{Recompute: recompute, Switches: &sw})
			requireSameBits(t, fmt.Sprintf("%s (recompute=%t) against the plain schedule", c.name, recompute), l0, l, w0, ws)
		}
	}
}

// A training selection on the device trains what the host optimiser trains: the same weights
// after a few steps (fp32 GEMMs), frozen parameters untouched, no gradients computed for them.
func TestTrainSelectionMatchesHost(t *testing.T) {
	w, dc := randomModel(t, 64, 2, 4, 2, 50, 64, false)
	const B, T = 2, 24
	cpu, err := graph.NewExec(w, dc, B, T, graph.Options[float32]{})
	if err != nil {
		t.Fatal(err)
	}
	dg, err := graph.NewExec(w, dc, B, T, graph.Options[float32]{})
	if err != nil {
		t.Fatal(err)
	}
	ps := cpu.Params()
	D, ch := w.Config.HeadDim(), dc.Channel(w.Config.HeadDim())
	sel := make([]step.Trained, len(ps))
	for i, p := range ps {
		switch {
		case strings.HasSuffix(p.Name, "q_proj.weight"):
			sel[i] = step.Trained{Rows: []int{ch, D + ch, 2*D + ch, 3*D + ch}}
		case strings.HasSuffix(p.Name, "k_proj.weight"):
			sel[i] = step.Trained{Rows: []int{ch, D + ch}}
		case strings.HasSuffix(p.Name, "o_proj.weight"):
			sel[i] = step.Trained{All: true}
		}
	}
	dm, err := New(dg, Options{FP32GEMM: true, Train: sel})
	if err != nil {
		t.Skipf("no usable GPU: %v", err)
	}
	defer dm.Close()
	opt := trainer.NewAdamW(ps, 0.9, 0.95, 1e-8, 0.1, nil)
	if err := opt.Restrict(ps, sel); err != nil {
		t.Fatal(err)
	}
	grads := make([][]float32, len(ps))
	for i, p := range ps {
		grads[i] = p.Grad
	}
	init := cpu.WeightsT().Tensors()
	rng := rand.New(rand.NewPCG(3, 4))
	for s := 0; s < 3; s++ {
		b := batchOf(rng, B, T, w.Config.VocabSize)
		sc := step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 3, Seed: 5, Step: s}
		if _, err := cpu.Step(b, sc); err != nil {
			t.Fatal(err)
		}
		opt.MaskUntrained(grads)
		trainer.ClipGlobalNorm(grads, 1)
		opt.Update(ps, grads, 1e-2)
		if _, err := dm.Step(b, sc); err != nil {
			t.Fatal(err)
		}
		if _, err := dm.Update(step.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Decay: opt.Decay, T: s + 1, Train: sel}, 1, 1, 1e-2); err != nil {
			t.Fatal(err)
		}
	}
	mo, vo := make([][]float32, len(ps)), make([][]float32, len(ps))
	for i := range ps {
		mo[i], vo[i] = make([]float32, len(opt.M[i])), make([]float32, len(opt.V[i]))
	}
	if err := dm.Pull(mo, vo); err != nil {
		t.Fatal(err)
	}
	got := dm.Params()
	for i, p := range ps {
		if e := relErr(got[i].Value, p.Value); !(e <= 1e-4) {
			t.Errorf("%s: device weights differ from the host's by %.3g", p.Name, e)
		}
		if sel[i].Frozen() {
			for j := range got[i].Value {
				if got[i].Value[j] != init[i].Data[j] {
					t.Fatalf("frozen %s changed at %d", p.Name, j)
				}
			}
		}
		if len(mo[i]) > 0 {
			if e := relErr(mo[i], opt.M[i]); !(e <= 1e-3) {
				t.Errorf("%s: device first moment differs from the host's by %.3g", p.Name, e)
			}
		}
	}
}

// Recomputation gives bit-identical losses and gradients (the same kernels on the same inputs).
func TestRecomputeIsExact(t *testing.T) {
	w, dc := randomModel(t, 128, 4, 4, 2, 97, 64, false)
	const B, T = 2, 48
	grads := func(recompute bool) ([]float64, [][]float32) {
		g, err := graph.NewExec(w, dc, B, T, graph.Options[float32]{Teacher: w})
		if err != nil {
			t.Fatal(err)
		}
		dm, err := New(g, Options{Recompute: recompute})
		if err != nil {
			t.Skipf("no usable GPU: %v", err)
		}
		defer dm.Close()
		rng := rand.New(rand.NewPCG(8, 9))
		var losses []float64
		for s := 0; s < 2; s++ {
			l, err := dm.Step(batchOf(rng, B, T, 97), step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 3, Seed: 2, Step: s, MicroBatch: s, LocalMicroBatch: s,
				DistillWeight: 0.5})
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, l.Loss, l.LM, l.KD, l.CR)
		}
		if err := dm.HostGrads(); err != nil {
			t.Fatal(err)
		}
		var out [][]float32
		for _, p := range dm.Params() {
			out = append(out, append([]float32(nil), p.Grad...))
		}
		return losses, out
	}
	l0, g0 := grads(false)
	l1, g1 := grads(true)
	for i := range l0 {
		if math.Float64bits(l0[i]) != math.Float64bits(l1[i]) {
			t.Fatalf("loss %d: %v without recomputation, %v with", i, l0[i], l1[i])
		}
	}
	for i := range g0 {
		for j := range g0[i] {
			if math.Float32bits(g0[i][j]) != math.Float32bits(g1[i][j]) {
				t.Fatalf("gradient %d element %d: %v without recomputation, %v with", i, j, g0[i][j], g1[i][j])
			}
		}
	}
}

// windowSource yields pseudo-random token windows, resumable by count (a trainer.Source).
type windowSource struct {
	n, vocab, seq int
}

func (s *windowSource) Next() ([]int, error) {
	rng := rand.New(rand.NewPCG(uint64(s.n), 77))
	s.n++
	w := make([]int, s.seq+1)
	for i := range w {
		w[i] = rng.IntN(s.vocab)
	}
	return w, nil
}
func (s *windowSource) Position() json.RawMessage { return json.RawMessage(fmt.Sprint(s.n)) }
func (s *windowSource) Seek(p json.RawMessage) error {
	_, err := fmt.Sscan(string(p), &s.n)
	return err
}

// Whole training runs of stories260K through trainer.Run, on the CPU graph and on the device
// (fp32 GEMMs), with the same data and noise: the LM loss agrees within 1e-3 relative at every
// step of a DMC recipe (zero-out, ramp, fine-tune with distillation and accumulation).
func TestTrainingRunMatchesCPU(t *testing.T) {
	p := dmctest.Stories260K(t)
	w := model.Convert[float32](p)
	r, err := trainer.ParseRecipe([]byte("name: t\ntarget_cr: 2\nzero_out_steps: 4\nramp_steps: 8\nfine_tune_steps: 8\nseq_len: 64\nbatch_size: 4\ngrad_accum: 2\nlr: 1e-3\nwarmup_steps: 2\ndecision_channel: 0\ndecision_offset: 2\ncr_loss_weight: 3\ndistill_weight: 0.5\nauto_channel: false\nauto_offset: false\ncheckpoint_every: 0\nlog_every: 100\n"))
	if err != nil {
		t.Fatal(err)
	}
	r.Resolve()
	run := func(gpu bool) []float64 {
		g, err := graph.NewExec(w, r.Config, r.MicroBatchSize(), r.SeqLen, graph.Options[float32]{Teacher: w})
		if err != nil {
			t.Fatal(err)
		}
		var m trainer.Model = g
		if gpu {
			dm, err := New(g, Options{FP32GEMM: true})
			if err != nil {
				t.Skipf("no usable GPU: %v", err)
			}
			defer dm.Close()
			m = dm
		}
		dir := t.TempDir()
		cfg := w.Config
		dc := r.Config
		_, err = trainer.Run(context.Background(), trainer.Options{RunDir: dir, Recipe: r, Model: m, ModelConfig: cfg,
			Source: &windowSource{vocab: cfg.VocabSize, seq: r.SeqLen},
			OnZeroOutEnd: func(ps []trainer.Param) error {
				q, err := model.NewParams[float32](cfg)
				if err != nil {
					return err
				}
				byName := map[string][]float32{}
				for _, t := range ps {
					byName[t.Name] = t.Value
				}
				for i := range q.Layers {
					q.Layers[i].Wq = byName[fmt.Sprintf("model.layers.%d.self_attn.q_proj.weight", i)]
					q.Layers[i].Wk = byName[fmt.Sprintf("model.layers.%d.self_attn.k_proj.weight", i)]
				}
				return dmc.ZeroDecisionRows(q, dc)
			}})
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		var lm []float64
		for _, line := range strings.Split(strings.TrimSpace(string(f)), "\n") {
			var x struct {
				LM float64 `json:"lm_loss"`
			}
			if err := json.Unmarshal([]byte(line), &x); err != nil {
				t.Fatal(err)
			}
			lm = append(lm, x.LM)
		}
		return lm
	}
	cpu, gpu := run(false), run(true)
	if len(cpu) != len(gpu) || len(cpu) != r.TotalSteps() {
		t.Fatalf("%d CPU and %d GPU steps, want %d", len(cpu), len(gpu), r.TotalSteps())
	}
	for i := range cpu {
		if d := math.Abs(gpu[i]-cpu[i]) / cpu[i]; !(d <= 1e-3) {
			t.Errorf("step %d: LM loss %.6f on the GPU, %.6f on the CPU (rel %.2e)", i+1, gpu[i], cpu[i], d)
		}
	}
	t.Logf("LM loss at the last step: CPU %.6f, GPU %.6f", cpu[len(cpu)-1], gpu[len(gpu)-1])
}

// The device draws the Gumbel noise the host would (graph.Exec.NoiseInto, dmc.NoiseKey), at
// full strength and damped (fine_tune_decisions: anneal).
func TestNoiseMatchesHost(t *testing.T) {
	dev, err := kernels.OpenTrain(0)
	if err != nil {
		t.Skip(err)
	}
	w, dc := randomModel(t, 64, 2, 4, 2, 50, 128, false)
	for _, sh := range []struct{ B, T int }{{1, 1}, {2, 37}, {3, 128}} {
		e, err := graph.NewExec(w, dc, sh.B, sh.T, graph.Options[float32]{})
		if err != nil {
			t.Fatal(err)
		}
		sc := graph.StepContext{Seed: 9, Step: 11, MicroBatch: 2, NoiseDamping: []float64{0, 0.3, 1}[sh.B-1]}
		Hkv := w.Config.NKVHeads
		host, got := make([]float32, sh.B*sh.T*Hkv), make([]float32, sh.B*sh.T*Hkv)
		buf, err := dev.Alloc(kernels.F32, len(got))
		if err != nil {
			t.Fatal(err)
		}
		for l := 0; l < 2; l++ {
			e.NoiseInto(host, sc, l)
			if err := dev.LogisticNoise(buf, e.NoiseKey(sc, l).State(), sh.B, sh.T, Hkv, graph.NoiseScale(sc)); err != nil {
				t.Fatal(err)
			}
			if err := buf.Download(got); err != nil {
				t.Fatal(err)
			}
			for i := range host {
				if host[i] != got[i] {
					t.Fatalf("B %d T %d layer %d element %d: device %v, host %v", sh.B, sh.T, l, i, got[i], host[i])
				}
			}
		}
		buf.Free()
	}
}

var _ trainer.Comm = (*GroupComm)(nil)

// A model in a one-rank NCCL group trains bit-identically to one without a group (the
// all-reduce of one rank is the identity), and GroupComm's scalar sums round-trip: the path
// that N ranks take, checked where one GPU is all there is.
func TestOneRankGroupIsIdentity(t *testing.T) {
	if _, err := kernels.NCCLVersion(); err != nil {
		t.Skipf("no NCCL: %v", err)
	}
	w, dc := randomModel(t, 128, 2, 4, 2, 97, 64, false)
	const B, T = 2, 32
	train := func(group bool) [][]float32 {
		g, err := graph.NewExec(w, dc, B, T, graph.Options[float32]{})
		if err != nil {
			t.Fatal(err)
		}
		dm, err := New(g, Options{})
		if err != nil {
			t.Skipf("no usable GPU: %v", err)
		}
		defer dm.Close()
		if group {
			id, err := kernels.NCCLGetUniqueID()
			if err != nil {
				t.Fatal(err)
			}
			if err := dm.JoinGroup(id, 0, 1); err != nil {
				t.Fatal(err)
			}
			if err := dm.JoinGroup(id, 0, 1); err == nil {
				t.Fatal("joined a second group")
			}
			gc := dm.GroupComm()
			v := []float64{1.5, -2, 3}
			if err := gc.AllReduceSum64(v); err != nil || v[0] != 1.5 || v[1] != -2 || v[2] != 3 {
				t.Fatalf("one-rank scalar sum: %v, %v", v, err)
			}
			if err := gc.AllReduceSum64(nil); err != nil {
				t.Fatalf("barrier: %v", err)
			}
			if dm.GroupSize() != 1 || gc.Size() != 1 || gc.Rank() != 0 {
				t.Fatalf("group size %d, comm %d/%d", dm.GroupSize(), gc.Rank(), gc.Size())
			}
		}
		decay := make([]bool, len(dm.Params()))
		rng := rand.New(rand.NewPCG(3, 4))
		for s := 0; s < 2; s++ {
			for mb := 0; mb < 2; mb++ {
				if _, err := dm.Step(batchOf(rng, B, T, 97), step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.5, CRWeight: 3, Seed: 5,
					Step: s, MicroBatch: mb, LocalMicroBatch: mb}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := dm.Update(step.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Decay: decay, T: s + 1}, 2, 1, 1e-3); err != nil {
				t.Fatal(err)
			}
		}
		m, v := make([][]float32, len(dm.Params())), make([][]float32, len(dm.Params()))
		for i, p := range dm.Params() {
			m[i], v[i] = make([]float32, len(p.Value)), make([]float32, len(p.Value))
		}
		if err := dm.Pull(m, v); err != nil {
			t.Fatal(err)
		}
		var out [][]float32
		for _, p := range dm.Params() {
			out = append(out, append([]float32(nil), p.Value...))
		}
		return out
	}
	a, b := train(false), train(true)
	for i := range a {
		for j := range a[i] {
			if math.Float32bits(a[i][j]) != math.Float32bits(b[i][j]) {
				t.Fatalf("parameter %d[%d]: %v alone, %v in a one-rank group", i, j, a[i][j], b[i][j])
			}
		}
	}
}
