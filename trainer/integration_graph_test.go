//go:build integration

// Integration with the real training graph (graph) and the stories260K weights. Behind a
// build tag so that the trainer's unit tests never depend on those packages compiling:
//
//	go test -tags integration -run RealGraph ./trainer
package trainer

import (
	"context"
	"io"
	"math"
	"os"
	"testing"
	"time"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/graph"
)

// The graph is a trainer.Model as it is (one step contract, package step).
var _ Model = (*graph.Graph)(nil)

// Resume with the real graph is bit-exact on the CPU: 7 steps straight (crossing all three
// stages and the zero-out hook) equal 3 steps + checkpoint + a fresh process resuming for 4.
func TestRealGraphResumeIsBitExact(t *testing.T) {
	const path = "../../shared/assets/tinyllamas-stories260K/stories260K.bin"
	if _, err := os.Stat(path); err != nil {
		t.Skipf("test asset missing (it lives in the shared assets folder next to the repository): %v", err)
	}
	r, err := LoadRecipe("stories260k")
	if err != nil {
		t.Fatal(err)
	}
	err = r.ApplyOverrides([]string{"zero_out_steps=2", "ramp_steps=2", "retrofit_steps=3", "fine_tune_steps=2", "seq_len=64", "batch_size=4", "grad_accum=2", "checkpoint_every=3", "log_every=1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := dmc.DefaultConfig()
	mk := func() (*graph.Graph, func([]Param) error) {
		w, err := checkpoints.ReadLlama2C(path)
		if err != nil {
			t.Fatal(err)
		}
		g, err := graph.New(w, cfg, r.MicroBatchSize(), r.SeqLen)
		if err != nil {
			t.Fatal(err)
		}
		hook := func(ps []Param) error {
			w := g.WeightsT()
			if err := dmc.ZeroDecisionRows(w, cfg); err != nil {
				return err
			}
			for i, tt := range w.Tensors() {
				if tt.Name != ps[i].Name {
					t.Fatalf("order %s vs %s", tt.Name, ps[i].Name)
				}
				copy(ps[i].Value, tt.Data)
			}
			return nil
		}
		return g, hook
	}
	run := func(dir string, stop int, resume bool) *graph.Graph {
		m, hook := mk()
		start := time.Now()
		res, err := Run(context.Background(), Options{RunDir: dir, Recipe: r, Model: m, Source: &fakeSource{V: 512, SeqLen: r.SeqLen},
			OnZeroOutEnd: hook, StopAfter: stop, Resume: resume, Progress: io.Discard, ModelConfig: "stories260K"})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d steps in %v, last %+v", res.Step, time.Since(start), res.Last)
		return m
	}
	a := run(t.TempDir(), 0, false)
	dir := t.TempDir()
	run(dir, 3, false)
	b := run(dir, 0, true)
	pa, pb := a.Params(), b.Params()
	diff := 0
	for i := range pa {
		for j := range pa[i].Value {
			if math.Float32bits(pa[i].Value[j]) != math.Float32bits(pb[i].Value[j]) {
				diff++
			}
		}
	}
	if diff != 0 {
		t.Fatalf("%d weights differ between the straight and the resumed run", diff)
	}
}
