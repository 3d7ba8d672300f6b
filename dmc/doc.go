// Package dmc implements Dynamic Memory Compression (Nawrot et al., arXiv 2403.09636) as
// specified in docs/dmc-spec.md: the per-head decision and importance read from one repurposed
// channel of q and k, the compressed KV cache used at inference, and the training-time math
// (Gumbel-sigmoid relaxation with a counter-based noise stream, windowed partial accumulation,
// the additive attention mask, the compression-rate loss and schedules) as plain float64 Go
// that serves as the oracle for the training graph's ops.
//
// The central guarantee, tested on a real checkpoint: with hard decisions and no noise,
// ParallelForward (the parallel training form) and model.Forward over a CompressedCache (the
// token-by-token inference update) produce the same logits.
//
// Conventions: decisions α, logits a and importances ω of one layer are laid out head-major,
// [NKVHeads·n] with index h·n + t. Position 0 of a sequence always appends (α_0 = 0), so that
// 1/(1 − mean α) equals tokens/slots exactly.
//
// Error policy: functions that take user-provided configuration (NewCompressedCache,
// ParallelForward, ZeroDecisionRows) validate it and return errors that say which field to fix;
// functions that only take slices sized by the caller panic on length mismatches, which are
// programmer bugs. The package knows nothing of files or the command line.
package dmc
