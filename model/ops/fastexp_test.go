package ops

import (
	"math"
	"testing"
)

func TestFastExp(t *testing.T) {
	for x := -87.0; x <= 88.5; x += 0.0137 {
		got, want := fastExp(x), math.Exp(x)
		if rel := math.Abs(got-want) / want; rel > 2e-8 {
			t.Fatalf("fastExp(%g) = %g, want %g (relative error %.2g)", x, got, want, rel)
		}
	}
	if fastExp(math.Inf(-1)) != 0 || fastExp(-1000) != 0 || !math.IsInf(fastExp(1000), 1) || !math.IsNaN(fastExp(math.NaN())) {
		t.Fatal("fastExp edge cases")
	}
}
