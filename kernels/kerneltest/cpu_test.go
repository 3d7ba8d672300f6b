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
