package kerneltest

import (
	"math/rand/v2"
	"testing"
)

func TestCPUConformance(t *testing.T) { Run(t, CPU{}) }

// The DMC reference must actually compress the random problems, otherwise the Cache checks
// would only exercise appends.
func TestReferenceCompresses(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	p := NewCacheProblem(rng, Geometries[2], DMC, 12, 2, 64, false)
	_, keys, _ := ReferenceCache(p)
	slots := 0
	for _, k := range keys {
		slots += len(k) / p.HeadDim
	}
	tokens := p.B * p.T * p.NKVHeads
	if cr := float64(tokens) / float64(slots); cr < 1.5 || cr > 3 {
		t.Fatalf("compression rate %.2f of the random DMC problem, want about 2", cr)
	}
	p.Mode = Vanilla
	_, keys, _ = ReferenceCache(p)
	for _, k := range keys {
		if len(k)/p.HeadDim != p.T {
			t.Fatalf("vanilla head holds %d slots, want %d", len(k)/p.HeadDim, p.T)
		}
	}
}

// A backend that writes nothing must fail: the NaN poisoning is what catches it.
func TestRelErrRejectsNaN(t *testing.T) {
	if e := RelErr(nanSlice(3), []float64{1, 2, 3}); e < 1 {
		t.Fatalf("RelErr of NaN output = %g", e)
	}
	if e := RelErr([]float32{1, 2, 3}, []float64{1, 2, 3}); e != 0 {
		t.Fatalf("RelErr of equal = %g", e)
	}
}

// The project's CPU inference (package model + package dmc) must agree with the oracle too:
// this ties the CUDA kernels, which pass the same suite, to what `dmc generate` computes.
func TestDMCPackageConformance(t *testing.T) { Run(t, DMCPackage{}) }

// The merge-heavy problems must produce merge segments longer than the window, so the suite
// exercises the ring subtraction.
func TestMergeBiasExceedsWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	p := NewCacheProblem(rng, Geometries[0], DMC, 12, 1, 90, false)
	for i := p.Channel; i < len(p.K); i += p.HeadDim {
		p.K[i] += 2
	}
	D := p.HeadDim
	for h := 0; h < p.NKVHeads; h++ {
		seg, longest := 0, 0
		for tk := 0; tk < p.T; tk++ {
			if tk > 0 && p.K[tk*p.NKVHeads*D+h*D+p.Channel] > DecisionOffset {
				seg++
			} else {
				seg = 1
			}
			longest = max(longest, seg)
		}
		if longest <= p.Window {
			t.Errorf("head %d: longest merge segment %d does not exceed the window %d", h, longest, p.Window)
		}
	}
}
