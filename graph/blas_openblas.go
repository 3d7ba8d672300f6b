//go:build openblas

package graph

/*
#cgo LDFLAGS: -lopenblas
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
*/
import "C"

import (
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/netlib/blas/netlib"
	G "gorgonia.org/gorgonia"

	"github.com/dmc-project/dmc/graph/ops"
)

// With -tags openblas (and CGO_LDFLAGS=-lopenblas) every GEMM, ours (graph/ops) and gorgonia's
// own, runs on OpenBLAS. OpenBLAS runs single-threaded and the kernels own the parallelism
// (ops.UseSerialBLAS): they split each Linear GEMM into one block per core (GOMAXPROCS) and call
// it from their per-head goroutines in attention. OpenBLAS's own threads would otherwise compete
// with the Go kernels' goroutines for the same cores (and spin in sched_yield between calls).
func init() {
	impl := netlib.Implementation{}
	blas32.Use(impl)
	blas64.Use(impl)
	G.Use(impl)
	C.openblas_set_num_threads(1)
	ops.UseSerialBLAS(impl, impl)
}

// BLAS names the GEMM implementation this binary was built with.
const BLAS = "openblas"

// blasThreads sets OpenBLAS's thread count (benchmarks of OpenBLAS's own threading) and returns
// a function that restores it.
func blasThreads(n int) (restore func()) {
	old := C.openblas_get_num_threads()
	C.openblas_set_num_threads(C.int(n))
	return func() { C.openblas_set_num_threads(old) }
}
