package trainer

import (
	"context"
	"testing"

	"github.com/dmc-project/dmc/trainer/step"
)

// offloadModel emulates a device executor (step.Optimizer) on the host: the "device" is an
// inner fakeModel with its own weights, gradient accumulators and moments; Params() are host
// mirrors that only Pull and Push touch.
type offloadModel struct {
	dev        *fakeModel
	host       []Param
	acc        [][]float32
	opt        *AdamW
	pulls      int
	updateSeen []int
}

var _ step.Optimizer = (*offloadModel)(nil)

func newOffloadModel(seed uint64) *offloadModel {
	m := &offloadModel{dev: newFakeModel(fakeV, fakeE, seed)}
	for _, p := range m.dev.Params() {
		m.host = append(m.host, Param{Name: p.Name, Shape: p.Shape, Value: append([]float32(nil), p.Value...),
			Grad: make([]float32, len(p.Value))})
		m.acc = append(m.acc, make([]float32, len(p.Value)))
	}
	m.opt = NewAdamW(m.dev.Params(), 0, 0, 0, 0, nil)
	return m
}

func (m *offloadModel) Params() []Param                                 { return m.host }
func (m *offloadModel) Forward(b Batch, sc StepContext) (Losses, error) { return m.dev.Forward(b, sc) }
func (m *offloadModel) Step(b Batch, sc StepContext) (Losses, error) {
	l, err := m.dev.Step(b, sc)
	for i, p := range m.dev.Params() {
		for j, g := range p.Grad {
			if sc.LocalMicroBatch == 0 {
				m.acc[i][j] = g
			} else {
				m.acc[i][j] += g
			}
		}
	}
	return l, err
}

func (m *offloadModel) Update(h step.AdamW, micro int, maxNorm, lr float64) (float64, error) {
	if micro > 1 {
		scaleAll(m.acc, float32(1/float64(micro)))
	}
	norm := ClipGlobalNorm(m.acc, maxNorm)
	if !finite(norm) {
		return norm, nil
	}
	m.opt.Beta1, m.opt.Beta2, m.opt.Eps, m.opt.WeightDecay, m.opt.Decay, m.opt.T = h.Beta1, h.Beta2, h.Eps, h.WeightDecay, h.Decay, h.T-1
	m.opt.Update(m.dev.Params(), m.acc, lr)
	m.updateSeen = append(m.updateSeen, h.T)
	return norm, nil
}

func (m *offloadModel) Pull(mo, v [][]float32) error {
	m.pulls++
	for i, p := range m.dev.Params() {
		copy(m.host[i].Value, p.Value)
		copy(mo[i], m.opt.M[i])
		copy(v[i], m.opt.V[i])
	}
	return nil
}

func (m *offloadModel) Push(mo, v [][]float32) error {
	for i, p := range m.dev.Params() {
		copy(p.Value, m.host[i].Value)
		copy(m.opt.M[i], mo[i])
		copy(m.opt.V[i], v[i])
	}
	return nil
}

// A model that runs the optimiser on its device trains exactly as the host path: the same
// weights bit for bit, the same metrics, also across a stop and resume and the zero-out hook.
func TestDeviceOptimizerMatchesHostPath(t *testing.T) {
	r := testRecipe(t)
	host := newSession(t, t.TempDir(), r, 1)
	host.run(t, context.Background())
	want := readMetrics(t, host.opts.RunDir)

	for _, stop := range []int{0, 3, 7} {
		dir := t.TempDir()
		s := newSession(t, dir, r, 1)
		om := newOffloadModel(1)
		s.opts.Model = om
		if stop > 0 {
			s.opts.StopAfter = stop
			s.run(t, context.Background())
			s = newSession(t, dir, r, 99) // a new process: other initial weights, restored from the checkpoint
			om = newOffloadModel(99)
			s.opts.Model, s.opts.Resume = om, true
		}
		s.run(t, context.Background())
		if om.pulls == 0 {
			t.Fatal("the trainer never pulled the device state for a checkpoint")
		}
		if err := om.Pull(om.opt.M, om.opt.V); err != nil {
			t.Fatal(err)
		}
		hp := host.model.Params()
		for i, p := range om.Params() {
			for j := range p.Value {
				if p.Value[j] != hp[i].Value[j] {
					t.Fatalf("stop %d: %s[%d] = %v on the device path, %v on the host path", stop, p.Name, j, p.Value[j], hp[i].Value[j])
				}
			}
		}
		got := readMetrics(t, dir)
		if len(got) != len(want) {
			t.Fatalf("stop %d: %d metric lines, want %d", stop, len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			g.Elapsed, w.Elapsed, g.TokensPerS, w.TokensPerS = 0, 0, 0, 0
			if g.Loss != w.Loss || g.GradNorm != w.GradNorm || g.Step != w.Step {
				t.Fatalf("stop %d, step %d: device path %+v, host path %+v", stop, i+1, g, w)
			}
		}
	}
}
