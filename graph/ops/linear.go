package ops

import (
	"fmt"
	"runtime"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/blas/gonum"
	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// serialBLAS, when set (UseSerialBLAS), is a single-threaded BLAS that the kernels call from
// their own goroutines, one per core.
var serialBLAS struct {
	f32 blas.Float32Level3
	f64 blas.Float64Level3
}

// UseSerialBLAS routes every GEMM of the kernels to a single-threaded BLAS (such as OpenBLAS
// with one thread) and lets the kernels own the parallelism: a Linear GEMM is split into one
// block of rows (or columns) per core, and attention calls it from its per-head goroutines.
// Without it, Linear calls blas32/blas64 (parallel by itself) and attention gonum's pure-Go GEMM.
// Call it before any graph runs.
func UseSerialBLAS(f32 blas.Float32Level3, f64 blas.Float64Level3) {
	serialBLAS.f32, serialBLAS.f64 = f32, f64
}

// gemm computes C = alpha·op(A)·op(B) + beta·C on row-major strided matrices with all cores:
// through blas32/blas64 (which the openblas build tag points at OpenBLAS), or split over the
// cores on the serial BLAS (UseSerialBLAS).
func gemm[T Float](tA, tB bool, m, n, k int, alpha float64, a []T, lda int, b []T, ldb int, beta float64, c []T, ldc int) {
	if serialBLAS.f32 == nil {
		gemmWith(blas32.Implementation(), blas64.Implementation(), tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	splitGemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// gemmSplitAlign is the granularity of a split GEMM's blocks (a multiple of the BLAS kernels'
// register blocking).
const gemmSplitAlign = 16

// splitGemm runs a GEMM on the serial BLAS as one block per core, splitting the larger of the
// rows and columns of C.
func splitGemm[T Float](tA, tB bool, m, n, k int, alpha float64, a []T, lda int, b []T, ldb int, beta float64, c []T, ldc int) {
	w := runtime.GOMAXPROCS(0)
	long := max(m, n)
	if w <= 1 || long < 2*gemmSplitAlign || m*n*k < 1<<18 {
		localGemm(tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	chunk := (long + w - 1) / w
	chunk = (chunk + gemmSplitAlign - 1) / gemmSplitAlign * gemmSplitAlign
	var wg sync.WaitGroup
	for lo := 0; lo < long; lo += chunk {
		hi := min(long, lo+chunk)
		run := func() {
			if m >= n { // rows lo..hi of C: rows of op(A)
				aOff := lo * lda
				if tA {
					aOff = lo
				}
				localGemm(tA, tB, hi-lo, n, k, alpha, a[aOff:], lda, b, ldb, beta, c[lo*ldc:], ldc)
				return
			}
			// columns lo..hi of C: columns of op(B)
			bOff := lo
			if tB {
				bOff = lo * ldb
			}
			localGemm(tA, tB, m, hi-lo, k, alpha, a, lda, b[bOff:], ldb, beta, c[lo:], ldc)
		}
		if hi == long {
			run() // the last block on the calling goroutine
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			run()
		}()
	}
	wg.Wait()
}

// localGemm is a single-threaded-use GEMM for kernels that already run one goroutine per core
// (per (sequence, head), or per block of a split GEMM): the serial BLAS when one is set, else
// gonum's pure-Go implementation, so that a threaded BLAS does not oversubscribe the cores with
// its own worker threads.
func localGemm[T Float](tA, tB bool, m, n, k int, alpha float64, a []T, lda int, b []T, ldb int, beta float64, c []T, ldc int) {
	if serialBLAS.f32 != nil {
		gemmWith(serialBLAS.f32, serialBLAS.f64, tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	gemmWith(gonum.Implementation{}, gonum.Implementation{}, tA, tB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

func gemmWith[T Float](i32 blas.Float32Level3, i64 blas.Float64Level3, tA, tB bool, m, n, k int, alpha float64, a []T, lda int, b []T, ldb int, beta float64, c []T, ldc int) {
	ta, tb := blas.NoTrans, blas.NoTrans
	if tA {
		ta = blas.Trans
	}
	if tB {
		tb = blas.Trans
	}
	switch a := any(a).(type) {
	case []float32:
		i32.Sgemm(ta, tb, m, n, k, float32(alpha), a, lda, any(b).([]float32), ldb, float32(beta), any(c).([]float32), ldc)
	case []float64:
		i64.Dgemm(ta, tb, m, n, k, alpha, a, lda, any(b).([]float64), ldb, beta, any(c).([]float64), ldc)
	}
}

// Linear is y = x·Wᵀ for x [N, in] and a weight W [out, in] stored row-major as in PyTorch and
// Hugging Face (so no transposed copy of the weight is ever made).
func Linear(x, w *G.Node) (*G.Node, error) { return apply(linearOp{}, x, w) }

type linearOp struct{}

func (linearOp) key() string             { return "Linear" }
func (linearOp) signature() ([]arg, arg) { return []arg{matArg, matArg}, matArg }
func (linearOp) diffWRT() []bool         { return []bool{true, true} }
func (linearOp) shape(in []tensor.Shape) (tensor.Shape, error) {
	if in[0][1] != in[1][1] {
		return nil, fmt.Errorf("Linear: x %v and W %v disagree on the input width", in[0], in[1])
	}
	return tensor.Shape{in[0][0], in[1][0]}, nil
}
func (linearOp) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	n, k, m := in[0].Shape()[0], in[0].Shape()[1], in[1].Shape()[0]
	dispatch(out.Dtype(), func() {
		gemm(false, true, n, m, k, 1, data[float32](in[0]), k, data[float32](in[1]), k, 0, out.Float32s(), m)
	}, func() {
		gemm(false, true, n, m, k, 1, data[float64](in[0]), k, data[float64](in[1]), k, 0, out.Float64s(), m)
	})
	return 0, nil
}
func (linearOp) grad(in G.Nodes, _, dy *G.Node) (G.Nodes, error) {
	dx, err := apply(linearDX{}, dy, in[1])
	if err != nil {
		return nil, err
	}
	dw, err := apply(linearDW{}, dy, in[0])
	if err != nil {
		return nil, err
	}
	return G.Nodes{dx, dw}, nil
}

// linearDX is dx = dy·W.
type linearDX struct{}

func (linearDX) key() string             { return "LinearDX" }
func (linearDX) signature() ([]arg, arg) { return []arg{matArg, matArg}, matArg }
func (linearDX) shape(in []tensor.Shape) (tensor.Shape, error) {
	return tensor.Shape{in[0][0], in[1][1]}, nil
}
func (linearDX) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	n, m, k := in[0].Shape()[0], in[0].Shape()[1], in[1].Shape()[1]
	dispatch(out.Dtype(), func() {
		gemm(false, false, n, k, m, 1, data[float32](in[0]), m, data[float32](in[1]), k, 0, out.Float32s(), k)
	}, func() {
		gemm(false, false, n, k, m, 1, data[float64](in[0]), m, data[float64](in[1]), k, 0, out.Float64s(), k)
	})
	return 0, nil
}

// linearDW is dW = dyᵀ·x.
type linearDW struct{}

func (linearDW) key() string             { return "LinearDW" }
func (linearDW) signature() ([]arg, arg) { return []arg{matArg, matArg}, matArg }
func (linearDW) shape(in []tensor.Shape) (tensor.Shape, error) {
	return tensor.Shape{in[0][1], in[1][1]}, nil
}
func (linearDW) exec(out *tensor.Dense, in []G.Value) (float64, error) {
	n, m, k := in[0].Shape()[0], in[0].Shape()[1], in[1].Shape()[1]
	dispatch(out.Dtype(), func() {
		gemm(true, false, m, k, n, 1, data[float32](in[0]), m, data[float32](in[1]), k, 0, out.Float32s(), k)
	}, func() {
		gemm(true, false, m, k, n, 1, data[float64](in[0]), m, data[float64](in[1]), k, 0, out.Float64s(), k)
	})
	return 0, nil
}
