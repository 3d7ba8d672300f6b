//go:build !openblas

package graph

// BLAS names the GEMM implementation this binary was built with.
const BLAS = "gonum (pure Go)"

// blasThreads is a no-op for gonum's BLAS, which runs on GOMAXPROCS goroutines.
func blasThreads(int) (restore func()) { return func() {} }
