//go:build openblas

package graph

import (
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/netlib/blas/netlib"
	G "gorgonia.org/gorgonia"
)

// With -tags openblas (and CGO_LDFLAGS=-lopenblas) every GEMM, ours (model/ops uses
// blas32/blas64) and gorgonia's own, runs on OpenBLAS.
func init() {
	impl := netlib.Implementation{}
	blas32.Use(impl)
	blas64.Use(impl)
	G.Use(impl)
}

// BLAS names the GEMM implementation this binary was built with.
const BLAS = "openblas"
