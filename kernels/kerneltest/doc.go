// Package kerneltest is the conformance suite every implementation of the inference kernels
// runs (in the style of gonum's testblas): the pure-Go float32 reference in this package and
// the CUDA kernels of package kernels both call Run with their Backend.
//
// Each check draws fresh random inputs, fills the outputs with NaN before the backend runs,
// and compares against a float64 oracle by the relative error ‖out−ref‖/‖ref‖: a float32
// backend must stay under 1e-4, a backend with bf16 operands (weights or KV cache stored as
// bf16) under 1e-2. Shapes cover MHA and GQA, odd lengths and lengths that cross the KV page
// and DMC window boundaries.
//
// Error policy: backends return errors for device failures; the suite reports them with
// t.Fatal. Shape bugs in a backend show up as mismatches, never as panics in the suite.
package kerneltest
