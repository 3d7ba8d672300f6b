//go:build !openblas

package graph

// BLAS names the GEMM implementation this binary was built with.
const BLAS = "gonum (pure Go)"
