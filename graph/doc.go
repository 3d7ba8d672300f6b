// Package graph builds the Llama + DMC training graph of a model for fixed micro-batch
// dimensions (B sequences of T tokens) out of the fused ops of graph/ops, differentiates it with
// gorgonia.Grad and runs it on TapeMachines. It implements step.Model, the interface the training
// loop drives: Params (Hugging Face names, slices aliasing the graph's tensors), Step (forward +
// backward) and Forward.
//
// Two graphs can exist over the same parameter tensors, each built on first use:
//   - plain: vanilla Llama (StepContext.DMC false) and stage 1 (ZeroOut < 1), where channel ch
//     of every query and key head is multiplied by ZeroOut before RoPE and nothing merges;
//   - DMC: decisions α from k[ch] − offset (Gumbel-sigmoid with noise keyed by seed, step,
//     micro-batch and layer, or hard 1[a > 0] when StepContext.Hard, or hard forward with the
//     gradient of σ(a) when StepContext.StraightThrough), importances from the group
//     mean of q[ch], windowed partial accumulation of pre-RoPE K and V, channel ch removed from
//     attention, the additive mask log(1 − α_{j+1}), and the loss
//     LM + CRWeight·mean_b max(0, α* − ᾱ_b) with ᾱ_b the straight-through hard mean.
//
// Note on ZeroOut: 1 means "no zero-out" and is what stage 2 and 3 pass; a zero StepContext
// therefore selects stage 1 with the channel fully removed and no merging.
//
// The default build uses gonum's pure-Go BLAS; the build tag openblas (blas_openblas.go) routes
// every GEMM to OpenBLAS through cgo (install libopenblas-dev, set CGO_LDFLAGS=-lopenblas),
// single-threaded: the kernels split the work over GOMAXPROCS goroutines themselves.
//
// Error policy: New/Step/Forward return errors for bad configurations, batch shapes, token ids
// and non-finite losses; internal shape bugs panic.
package graph
