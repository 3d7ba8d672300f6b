// Package device runs the training graph of package graph on a CUDA GPU: the same Program the
// CPU tape machine runs (one definition of the model), executed node by node on the device
// kernels of package kernels. It implements step.Model and step.Optimizer, so the trainer
// drives it as it drives the CPU graph, with the optimiser on the device.
//
// Execution: the Program's nodes are ordered once (depth-first from the outputs and the
// parameter gradients, children first); every fused op of graph/ops (ops.Describe) maps to its
// kernel, and the loss head's few gorgonia ops (element-wise +, −, ⊙, ÷, ≥, negation, sum,
// repeat, reshape, constants) to small element-wise kernels. Tensors stay on the device for
// the whole step; only the tokens and the scalar inputs go up, and five loss scalars come down.
//
// Memory plan: each schedule's activations and gradients are placed in one arena by a
// first-fit allocator over the schedule's liveness (a buffer is free after its last reader;
// packed backward results and reshapes are views), so the arena is allocated once and every
// step reuses it. GEMM operands get bf16 shadows (produced by RMSNorm and SwiGLU directly,
// else by a cast), parameters keep fp32 masters, a bf16 copy, a gradient accumulator and the
// AdamW moments. Gradients of a micro-batch are added into the accumulators as soon as they
// are computed, so they do not stay alive.
//
// Determinism: no kernel uses atomics and the GEMM algorithms are fixed per shape, so the same
// inputs give the same bits run to run; the Gumbel noise is drawn on the device from the same
// dmc.NoiseKey as the CPU (kernels.LogisticNoise from NoiseKey.State: the host's values bit
// for bit).
//
// A schedule that does not fit is refused before allocating (ErrDoesNotFit), with what
// would fit: recomputation (planned for comparison), a smaller batch, a training subset.
//
// Without the dmc_cuda build tag, New returns an error that says how to build with CUDA.
package device
