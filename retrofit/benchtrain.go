package retrofit

import (
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"time"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/graph/device"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer"
	"github.com/dmc-project/dmc/trainer/step"
)

// TrainBenchOptions configure BenchTrain (the flags of `dmc bench train`).
type TrainBenchOptions struct {
	Model         string // preset, YAML model config or checkpoint
	RandomWeights bool   // random initial weights (a preset needs them unless its weights are found)
	Seq, Batch    int
	Cache         string // "dmc" (the relaxed DMC graph, stage 2) or "vanilla"
	Device        string // "cuda" (the CPU is measured by go test -bench)
	Steps, Warmup int    // timed steps and untimed warm-up steps
	GEMM          string // "bf16" or "fp32"
	Profile       bool   // time every op of one extra step (synchronising after each)
	Train         string // what is trained: all, attention or decisions (the recipe's train)
	Recompute     bool   // recompute activations per layer in the backward
	Seed          uint64
	Command       string // recorded in the report
}

// TrainBenchReport is the result of BenchTrain (its JSON document).
type TrainBenchReport struct {
	Command     string    `json:"command"`
	Device      string    `json:"device"`
	Model       string    `json:"model"`
	Params      int64     `json:"params"`
	Seq         int       `json:"seq"`
	Batch       int       `json:"batch"`
	Cache       string    `json:"cache"`
	Train       string    `json:"train"`
	Recompute   bool      `json:"recompute"`
	GEMM        string    `json:"gemm"`
	StepMs      []float64 `json:"step_ms"`
	MedianMs    float64   `json:"median_step_ms"`
	TokensPerS  float64   `json:"tokens_per_s"`
	StepFLOPs   float64   `json:"step_flops"` // graph.StepFLOPs: 6·matmul params·tokens + attention
	PeakFLOPS   float64   `json:"peak_flops"` // the device's dense bf16 peak MFU divides by
	MFU         float64   `json:"mfu"`
	PeakMemGiB  float64   `json:"peak_mem_gib"` // device memory in use at its highest (all of the process)
	ArenaGiB    float64   `json:"arena_gib"`    // of which the activation/gradient arena
	GeneratedAt string    `json:"generated_at"`
	Profile     string    `json:"profile,omitempty"` // per-op times of one extra step (Profile)
}

// BenchTrain measures training steps (forward, backward, clipping, AdamW) of a model on the GPU.
func BenchTrain(o TrainBenchOptions, progress io.Writer) (*TrainBenchReport, error) {
	if progress == nil {
		progress = io.Discard
	}
	if o.Device != "cuda" {
		return nil, fmt.Errorf("--device %q: dmc bench train measures the GPU (--device cuda); the CPU trainer is measured by `go test -bench . ./graph`", o.Device)
	}
	if o.Seq < 1 || o.Batch < 1 || o.Steps < 1 || o.Warmup < 0 {
		return nil, fmt.Errorf("--seq, --batch and --steps must be ≥ 1 and --warmup ≥ 0 (got %d, %d, %d, %d)", o.Seq, o.Batch, o.Steps, o.Warmup)
	}
	if o.Cache != "dmc" && o.Cache != "vanilla" {
		return nil, fmt.Errorf("--cache %q: use dmc or vanilla", o.Cache)
	}
	var w *model.Weights
	if o.RandomWeights {
		info, err := LoadConfig(o.Model)
		if err != nil {
			return nil, err
		}
		cfg := info.Config
		fmt.Fprintf(progress, "drawing random weights for %s (%s params)\n", cfg.Name, HumanCount(cfg.NumParams()))
		if w, err = model.RandomParams[float32](cfg, o.Seed); err != nil {
			return nil, err
		}
	} else {
		lm, err := LoadModel(o.Model, LoadOptions{Warn: progress})
		if err != nil {
			return nil, err
		}
		w = lm.Weights
	}
	cfg := w.Config
	if o.Seq > cfg.MaxSeqLen {
		return nil, fmt.Errorf("--seq %d exceeds the model's context of %d tokens", o.Seq, cfg.MaxSeqLen)
	}
	dc := dmc.DefaultConfig()
	if err := dc.CheckHeadDim(cfg.HeadDim()); err != nil {
		return nil, err
	}
	g, err := graph.NewExec(w, dc, o.Batch, o.Seq, graph.Options[float32]{})
	if err != nil {
		return nil, err
	}
	w = nil // the graph holds its own copy
	sel, err := TrainSelection(o.Train, g.Params(), cfg, dc)
	if err != nil {
		return nil, err
	}
	dm, err := device.New(g, device.Options{FP32GEMM: o.GEMM == "fp32", Train: sel, Recompute: o.Recompute})
	if err != nil {
		return nil, err
	}
	defer dm.Close()
	rep := &TrainBenchReport{Command: o.Command, Device: dm.Describe(), Model: cfg.Name, Params: cfg.NumParams(), Seq: o.Seq,
		Batch: o.Batch, Cache: o.Cache, Train: o.Train, Recompute: o.Recompute, GEMM: o.GEMM, StepFLOPs: graph.StepFLOPs(cfg, o.Batch, o.Seq),
		PeakFLOPS: kernels.PeakBF16FLOPS(dm.Describe()), GeneratedAt: time.Now().UTC().Format(time.RFC3339)}
	sc := step.Context{ZeroOut: 1}
	if o.Cache == "dmc" {
		sc = step.Context{DMC: true, ZeroOut: 1, TargetAlpha: 0.75, CRWeight: 1}
	}
	decay := make([]bool, len(dm.Params()))
	for i, p := range dm.Params() {
		decay[i] = trainer.DefaultDecay(p)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 1))
	b := step.Batch{BatchSize: o.Batch, SeqLen: o.Seq, Inputs: make([]int, o.Batch*o.Seq), Targets: make([]int, o.Batch*o.Seq)}
	_, total := dm.MemInfo()
	var peak int64
	for s := 0; s < o.Warmup+o.Steps; s++ {
		for i := range b.Inputs {
			b.Inputs[i], b.Targets[i] = rng.IntN(cfg.VocabSize), rng.IntN(cfg.VocabSize)
		}
		sc.Step, sc.Seed = s, o.Seed
		start := time.Now()
		l, err := dm.Step(b, sc)
		if err != nil {
			return nil, fmt.Errorf("step %d: %w", s+1, err)
		}
		if _, err := dm.Update(step.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Decay: decay, T: s + 1, Train: sel}, 1, 1, 1e-4); err != nil {
			return nil, fmt.Errorf("step %d: %w", s+1, err)
		}
		if err := dm.Sync(); err != nil {
			return nil, err
		}
		ms := float64(time.Since(start).Microseconds()) / 1e3
		free, _ := dm.MemInfo()
		peak = max(peak, total-free)
		what := "warm-up"
		if s >= o.Warmup {
			rep.StepMs = append(rep.StepMs, ms)
			what = "timed"
		}
		fmt.Fprintf(progress, "step %d/%d (%s): %.1f ms, loss %.4f\n", s+1, o.Warmup+o.Steps, what, ms, l.Loss)
	}
	if o.Profile {
		dm.Profile(true)
		if _, err := dm.Step(b, sc); err != nil {
			return nil, err
		}
		if _, err := dm.Update(step.AdamW{Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, Decay: decay, T: o.Warmup + o.Steps + 1, Train: sel}, 1, 1, 1e-4); err != nil {
			return nil, err
		}
		rep.Profile = dm.ProfileReport()
		dm.Profile(false)
	}
	sorted := append([]float64(nil), rep.StepMs...)
	sort.Float64s(sorted)
	rep.MedianMs = sorted[len(sorted)/2]
	rep.TokensPerS = float64(o.Batch*o.Seq) / (rep.MedianMs / 1e3)
	if rep.PeakFLOPS > 0 {
		rep.MFU = rep.StepFLOPs / (rep.MedianMs / 1e3) / rep.PeakFLOPS
	}
	rep.PeakMemGiB = float64(peak) / (1 << 30)
	rep.ArenaGiB = float64(dm.ArenaBytes()) / (1 << 30)
	return rep, nil
}
