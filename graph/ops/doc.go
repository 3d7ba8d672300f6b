// Package ops is the small set of fused Gorgonia operations the DMC training graph is built
// from. It is also the contract a device executor implements: each op below lists its inputs,
// output, shapes and what its backward needs. Every op works on float32 and float64 (all float
// inputs of one op share the dtype), runs its Go kernel in parallel over rows or over
// (sequence, head) pairs, and writes into the tape machine's preallocated register when one of
// the right shape is offered (UsePreallocDo), else into a tensor of the graph's Arena
// (AttachArena), recycled from run to run, else into a new tensor. Every kernel overwrites all
// of its output (the op tests run every graph on NaN-filled recycled outputs). Backward passes are ops of their own, applied in
// SymDiff, so a graph differentiated with gorgonia.Grad runs on a TapeMachine; the backward ops
// are not differentiable again. Every op's key (its WriteHash) encodes all of its parameters,
// because gorgonia hash-conses nodes.
//
// Layout: activations are 2-D, one row per token, rows n = b·T + t for sequence b and position
// t (T the sequence length, fixed per op); a row of q holds the Hq heads of D channels
// back to back ([N, Hq·D]), k and v likewise [N, Hkv·D]; per-KV-head scalars (decisions α,
// importances ω, noise) are [N, Hkv]. Weights are row-major [out, in] as in Hugging Face.
//
//	op                inputs → output                               backward needs / produces
//	Linear            x [N,in], W [out,in] → x·Wᵀ [N,out]           dy,W → dx = dy·W; dy,x → dW = dyᵀ·x (two GEMMs)
//	RMSNorm(eps)      x [N,d], w [d] → x/rms(x)·w                   x, w, dy → dx; x, dy → dw (rms recomputed)
//	RoPE(spec)        x [N,H·D], s scalar → R_t(x with ch ×s)       dy, s → S·R_tᵀ·dy (inverse rotation, then ×s)
//	SwiGLU            a, b [N,h] → silu(a)·b                        a, b, dy → packed [da | db] (one sigmoid each)
//	Embedding         E [V,d], ids [N] int → E[ids] [N,d]           ids, dy → dE (scatter-add; zero elsewhere)
//	SoftmaxCE         logits [N,V], targets [N] int → mean CE       logits, targets, dloss → dlogits (recomputes softmax)
//	                  (targets < 0 ignored; rows normalised by their own max)
//	DMCDecide         k [N,Hkv·D], noise [N,Hkv], hard → α [N,Hkv]  k, noise, hard, dα → dk (non-zero only on channel ch)
//	                  hard = 0 soft: σ((k[ch]−off+noise)/τ); 1 hard: 1[k[ch]−off>0], zero gradient;
//	                  2 straight-through: the hard α, the gradient of σ(k[ch]−off); α = 0 at t = 0
//	DMCImportance     q [N,Hq·D] → ω [N,Hkv]                        q, dω → dq (channel ch of each head of the group)
//	                  ω = σ(mean_group q[ch] + off) + ε(dtype)
//	DMCMerge(W)       x [N,Hkv·D], α, ω [N,Hkv] → x̃ [N,Hkv·D]       x, α, ω, dx̃ → packed [dx | dα | dω] (recomputes the
//	                  x̃_i = Σ_{j∈win(i)} c_ij ω_j x_j / Σ c_ij ω_j,     window sums; O(T·W·D) per (b, head), O(T²·D) for W = 0)
//	                  c_ij = Π_{m=j+1..i} α_m, win(i) = last W positions of the sequence up to i (all for W = 0)
//	Attention(spec)   q [N,Hq·D], k, v [N,Hkv·D], [α [N,Hkv]]       q, k, v, [α], dO → packed [dq | dk | dv | (dα)]
//	                  → o [N,Hq·D]: causal GQA softmax(q·kᵀ/√D + M)·v,  (recomputes the probabilities per (b, KV head);
//	                  M_ij = log(1−α_{j+1}) for j < i when masked        dα uses e^{s_ij−m_i}/L_i, never ÷(1−α))
//	DMCHardCount(T)   α [N,Hkv] → [B] count of α > 0.5 per sequence  α, g [B] → dα = g[b] (straight-through estimator)
//	DMCHeadCount(T)   α [N,Hkv] → [B·Hkv] count per (sequence, head)  α, g [B·Hkv] → dα[n,h] = g[b·Hkv + h]
//	Unpack            packed [n] → one segment, reshaped            (backward only; splits packed gradients)
//
// Kernels: Linear runs one GEMM through gonum's blas32/blas64, or, when a single-threaded BLAS
// is installed with UseSerialBLAS (the graph's openblas build tag installs OpenBLAS with one
// thread), one GEMM block per core on it. Attention runs per (sequence, KV head) goroutine, the
// G query heads of the group in turn, in blocks of 64 query rows against the keys up to the
// block's last row (most of the causal upper triangle is skipped), with the serial BLAS or else
// gonum's pure-Go GEMM, so that no threaded BLAS oversubscribes the cores; its backward
// recomputes the probabilities block by block
// (no T×T state is kept between forward and backward). DMCMerge runs per (sequence, KV head).
// Element-wise and row-wise kernels split rows over the cores.
//
// Masked scores that are −∞ (α = 1) get probability exactly 0: every row is normalised by the
// maximum over its unmasked entries, and its own diagonal entry is never masked. Noise is an
// input (not drawn inside an op) so that the executor stays deterministic and resumable: the
// graph fills it from dmc.NoiseKey.
//
// Error policy: graph-building functions return errors for inconsistent shapes or specs (they
// come from configuration); kernels return errors for out-of-range token ids. Slice-length
// bugs inside kernels panic.
package ops
