package cli

import (
	"fmt"
	"math"
)

// Range checks of numeric flags, run before a command does any work. Each message names the
// flag, the valid range and the value given.

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// checkFloat refuses NaN, ±Inf and values outside the range that ok accepts; want describes
// the range ("≥ 0", "in (0, 1]").
func checkFloat(flag string, v float64, ok func(float64) bool, want string) error {
	if !finite(v) || !ok(v) {
		return fmt.Errorf("--%s must be a finite number %s, got %g", flag, want, v)
	}
	return nil
}

func checkInt(flag string, v, lo int, want string) error {
	if v < lo {
		return fmt.Errorf("--%s must be %s, got %d", flag, want, v)
	}
	return nil
}

// firstErr returns the first non-nil error.
func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
