package ops

import "math"

// isFloat32 reports whether T is float32: such kernels may use fastExp.
func isFloat32[T Float]() bool {
	var z T
	_, ok := any(z).(float32)
	return ok
}

const (
	log2e = 1.4426950408889634
	ln2Hi = 6.93147180369123816490e-01
	ln2Lo = 1.90821492927058770002e-10
)

// fastExp is e^x to about 1e-8 relative error (ample for float32 results), 0 below
// float32's normal range (including −∞) and +Inf above it. It replaces math.Exp in the
// float32 instantiations of the softmax kernels, where the exponentials are a large share of
// the work; float64 kernels keep math.Exp so exactness tests stay bit-comparable.
func fastExp(x float64) float64 {
	if !(x > -87.3) { // below range, −∞ or NaN
		if math.IsNaN(x) {
			return x
		}
		return 0
	}
	if x > 88.8 {
		return math.Inf(1)
	}
	k := math.Floor(x*log2e + 0.5)
	r := x - k*ln2Hi - k*ln2Lo // |r| ≤ ln2/2
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040+r/40320)))))))
	return p * math.Float64frombits(uint64(int64(k)+1023)<<52)
}
