package model

import (
	"runtime"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// impl is gonum's BLAS: pure Go with assembly dot/axpy kernels for float32 and float64.
var impl gonum.Implementation

// parallelFor splits [0, n) into contiguous chunks run on up to GOMAXPROCS goroutines. work is
// the rough cost of one index; small jobs run inline so tiny models are not slowed by scheduling.
func parallelFor(n int, work int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if workers > n {
		workers = n
	}
	if workers <= 1 || n*work < 1<<15 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, hi)
	}
	wg.Wait()
}

// MatMulT computes y[t, o] = Σ_i x[t, i]·w[o, i] for T rows of x (row-major [T, in]) against
// w (row-major [out, in]), writing y [T, out]. Parallel over output rows; BLAS kernels for the
// concrete float32/float64 types, a portable loop otherwise.
func MatMulT[T Float](y, x, w []T, rows, in, out int) {
	switch yy := any(y).(type) {
	case []float32:
		xx, ww := any(x).([]float32), any(w).([]float32)
		parallelFor(out, rows*in, func(lo, hi int) {
			if rows == 1 {
				impl.Sgemv(blas.NoTrans, hi-lo, in, 1, ww[lo*in:hi*in], in, xx, 1, 0, yy[lo:hi], 1)
				return
			}
			impl.Sgemm(blas.NoTrans, blas.Trans, rows, hi-lo, in, 1, xx, in, ww[lo*in:hi*in], in, 0, yy[lo:], out)
		})
		return
	case []float64:
		xx, ww := any(x).([]float64), any(w).([]float64)
		parallelFor(out, rows*in, func(lo, hi int) {
			if rows == 1 {
				impl.Dgemv(blas.NoTrans, hi-lo, in, 1, ww[lo*in:hi*in], in, xx, 1, 0, yy[lo:hi], 1)
				return
			}
			impl.Dgemm(blas.NoTrans, blas.Trans, rows, hi-lo, in, 1, xx, in, ww[lo*in:hi*in], in, 0, yy[lo:], out)
		})
		return
	}
	parallelFor(out, rows*in, func(lo, hi int) {
		for o := lo; o < hi; o++ {
			wr := w[o*in : (o+1)*in]
			for t := 0; t < rows; t++ {
				y[t*out+o] = Dot(x[t*in:(t+1)*in], wr)
			}
		}
	})
}

// Dot is the inner product of two equal-length vectors.
func Dot[T Float](a, b []T) T {
	b = b[:len(a)]
	var s0, s1, s2, s3 T
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}
