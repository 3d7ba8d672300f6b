package trainer

import (
	"context"
	"math"
	"testing"

	"github.com/dmc-project/dmc/trainer/step"
)

// A training selection updates exactly what it names, keeps moments only for that, and resumes
// bit-exactly (the compacted moments round-trip through checkpoints).
func TestTrainSelection(t *testing.T) {
	r := testRecipe(t)
	sel := func(m *fakeModel) []step.Trained {
		ps := m.Params()
		tr := make([]step.Trained, len(ps))
		for i := range tr {
			tr[i] = step.Trained{All: true}
		}
		tr[0] = step.Trained{Rows: []int{1, 3}} // emb [V, E]: two rows
		tr[1] = step.Trained{}                  // norm: frozen
		return tr
	}
	straight := newSession(t, t.TempDir(), r, 1)
	init := newFakeModel(fakeV, fakeE, 1).Params()
	straight.opts.Train = sel(straight.model)
	straight.run(t, context.Background())
	got := straight.model.Params()
	for v := 0; v < fakeV; v++ {
		for e := 0; e < fakeE-1; e++ { // the last column is zeroed by the stage-1 hook
			j := v*fakeE + e
			changed := got[0].Value[j] != init[0].Value[j]
			if changed != (v == 1 || v == 3) {
				t.Errorf("emb[%d,%d] changed=%t; only rows 1 and 3 are trained", v, e, changed)
			}
		}
	}
	for j := range got[1].Value {
		if got[1].Value[j] != init[1].Value[j] {
			t.Fatalf("the frozen %s changed at %d", got[1].Name, j)
		}
	}
	changed := false
	for j := range got[2].Value {
		changed = changed || got[2].Value[j] != init[2].Value[j]
	}
	if !changed {
		t.Fatalf("%s (trained) did not change", got[2].Name)
	}

	dir := t.TempDir()
	first := newSession(t, dir, r, 1)
	first.opts.Train, first.opts.StopAfter = sel(first.model), 5
	first.run(t, context.Background())
	second := newSession(t, dir, r, 42)
	second.opts.Train, second.opts.Resume = sel(second.model), true
	second.run(t, context.Background())
	requireSameWeights(t, straight.model, second.model, "stop at 5 and resume with a selection")

	// The optimiser holds moments only for the trained elements.
	opt := NewAdamW(got, 0.9, 0.95, 1e-8, 0, nil)
	if err := opt.Restrict(got, sel(straight.model)); err != nil {
		t.Fatal(err)
	}
	if len(opt.M[0]) != 2*fakeE || len(opt.M[1]) != 0 || len(opt.M[2]) != len(got[2].Value) {
		t.Fatalf("moment sizes %d, %d, %d", len(opt.M[0]), len(opt.M[1]), len(opt.M[2]))
	}
	if err := opt.Restrict(got, []step.Trained{{Rows: []int{99}}, {}, {All: true}, {All: true}}); err == nil {
		t.Error("a row outside the parameter was accepted")
	}
}

// A row-subset update is the full update restricted to those rows.
func TestAdamWRowsMatchFull(t *testing.T) {
	p := []Param{{Name: "w", Shape: []int{4, 3}, Value: make([]float32, 12), Grad: make([]float32, 12)}}
	for j := range p[0].Value {
		p[0].Value[j], p[0].Grad[j] = float32(j)/7, float32(math.Sin(float64(j)))
	}
	full := []Param{{Name: "w", Shape: []int{4, 3}, Value: append([]float32(nil), p[0].Value...)}}
	a := NewAdamW(full, 0.9, 0.95, 1e-8, 0.1, nil)
	b := NewAdamW(p, 0.9, 0.95, 1e-8, 0.1, nil)
	if err := b.Restrict(p, []step.Trained{{Rows: []int{0, 2}}}); err != nil {
		t.Fatal(err)
	}
	for s := 0; s < 3; s++ {
		a.Update(full, [][]float32{p[0].Grad}, 1e-2)
		b.Update(p, [][]float32{p[0].Grad}, 1e-2)
	}
	for j := range p[0].Value {
		row := j / 3
		want := full[0].Value[j]
		if row == 1 || row == 3 {
			want = float32(j) / 7
		}
		if p[0].Value[j] != want {
			t.Fatalf("element %d (row %d): %v, want %v", j, row, p[0].Value[j], want)
		}
	}
}
