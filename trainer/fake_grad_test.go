package trainer

import (
	"math"
	"testing"
)

// The fake model's hand-written backward against float64 central differences, in every
// StepContext regime the trainer uses.
func TestFakeModelGradientsFiniteDifference(t *testing.T) {
	for _, sc := range []StepContext{
		{ZeroOut: 1},
		{ZeroOut: 0.4},
		{DMC: true, ZeroOut: 1, TargetAlpha: 0.9, CRWeight: 1, Seed: 7},
		{DMC: true, ZeroOut: 1, TargetAlpha: 0.9, CRWeight: 2.5, Seed: 7, Hard: true},
	} {
		m := newFakeModel(5, 4, 3)
		src := &fakeSource{V: 5, SeqLen: 6}
		b := Batch{BatchSize: 2, SeqLen: 6, Inputs: make([]int, 12), Targets: make([]int, 12)}
		for i := 0; i < 2; i++ {
			w, _ := src.Next()
			copy(b.Inputs[i*6:], w[:6])
			copy(b.Targets[i*6:], w[1:])
		}
		_, grads := m.eval(b, sc, true)
		for pi, p := range m.Params() {
			for j := range p.Value {
				orig := p.Value[j]
				h := float32(1e-2)
				p.Value[j] = orig + h
				lp, _ := m.eval(b, sc, false)
				p.Value[j] = orig - h
				lm, _ := m.eval(b, sc, false)
				p.Value[j] = orig
				fd := (lp.Loss - lm.Loss) / float64(2*h)
				if d := math.Abs(fd - grads[pi][j]); d > 2e-4+1e-2*math.Abs(fd) {
					t.Fatalf("%+v: d%s[%d]: backward %.6g, finite difference %.6g", sc, p.Name, j, grads[pi][j], fd)
				}
			}
		}
	}
}
