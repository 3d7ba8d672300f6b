package ops

import (
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas/gonum"
)

// TestSplitGemm checks the per-core split of a GEMM on a serial BLAS (gonum's, standing in for
// single-threaded OpenBLAS) against a direct GEMM, for every transposition and for splits by
// rows and by columns, on strided sub-matrices.
func TestSplitGemm(t *testing.T) {
	old := serialBLAS
	UseSerialBLAS(gonum.Implementation{}, gonum.Implementation{})
	defer func() { serialBLAS = old }()
	rng := rand.New(rand.NewPCG(3, 3))
	for _, sz := range [][3]int{{300, 70, 64}, {70, 300, 64}, {1000, 33, 20}, {33, 1000, 20}, {129, 129, 17}, {10, 10, 10}} {
		m, n, k := sz[0], sz[1], sz[2]
		for _, tA := range []bool{false, true} {
			for _, tB := range []bool{false, true} {
				ar, ac := m, k
				if tA {
					ar, ac = k, m
				}
				br, bc := k, n
				if tB {
					br, bc = n, k
				}
				lda, ldb, ldc := ac+3, bc+5, n+2
				a := randVals(rng, ar*lda, -1, 1)
				b := randVals(rng, br*ldb, -1, 1)
				c0 := randVals(rng, m*ldc, -1, 1)
				want := append([]float64(nil), c0...)
				gemmWith(gonum.Implementation{}, gonum.Implementation{}, tA, tB, m, n, k, 0.7, a, lda, b, ldb, 0.3, want, ldc)
				got := append([]float64(nil), c0...)
				gemm(tA, tB, m, n, k, 0.7, a, lda, b, ldb, 0.3, got, ldc)
				assertClose(t, "split gemm", got, want, 1e-12)
			}
		}
	}
}
