package trainer

import (
	"bytes"
	"math"
	"testing"

	"github.com/dmc-project/dmc/configs"
)

// FuzzParseRecipe: arbitrary YAML gives a recipe or an error, never a panic. An accepted
// recipe renders as YAML that parses back to the same YAML; one that validates has a
// positive micro-batch, tokens per step and step counts, and resolving it is idempotent.
func FuzzParseRecipe(f *testing.F) {
	for _, name := range configs.Names("recipes") {
		if b, err := configs.Read("recipes", name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("lr: 1e-4\nsteps: 10\n"))
	f.Add([]byte("lr: .nan\ntarget_cr: -1\n"))
	f.Add([]byte("batch_size: 3\ngrad_accum: 0\n"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("unknown_field: 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 64<<10 {
			return
		}
		r, err := ParseRecipe(b)
		if err != nil {
			return
		}
		y, err := r.YAML()
		if err != nil {
			return // e.g. a value YAML cannot encode; not a parser failure
		}
		r2, err := ParseRecipe(y)
		if err != nil {
			t.Fatalf("the YAML of an accepted recipe does not parse: %v\n%s", err, y)
		}
		y2, err := r2.YAML()
		if err != nil || !bytes.Equal(y, y2) {
			t.Fatalf("recipe changed in a YAML round trip (%v):\n%s\n---\n%s", err, y, y2)
		}
		if r.Validate() != nil {
			return
		}
		if r.MicroBatchSize() <= 0 || r.TokensPerStep() <= 0 {
			t.Fatalf("valid recipe with micro-batch %d, tokens per step %d", r.MicroBatchSize(), r.TokensPerStep())
		}
		if r.Ramp() < 0 || r.Retrofit() < 0 {
			t.Fatalf("valid recipe with ramp %d, retrofit %d steps", r.Ramp(), r.Retrofit())
		}
		if math.IsNaN(r.LR) || r.LR <= 0 {
			t.Fatalf("valid recipe with lr %v", r.LR)
		}
		ramp, retro := r.Ramp(), r.Retrofit()
		r.Resolve()
		if r.Ramp() != ramp || r.Retrofit() != retro {
			t.Fatalf("Resolve changed the schedule: %d/%d -> %d/%d", ramp, retro, r.Ramp(), r.Retrofit())
		}
	})
}
