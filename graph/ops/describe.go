package ops

import (
	G "gorgonia.org/gorgonia"
)

// Kind names one fused op, or one backward op, of this package for an executor other than
// gorgonia's tape machine (the CUDA executor): together with OpInfo's fields it is everything
// the op computes, so the executor runs the very graph the CPU trainer runs.
type Kind int

// The kinds, in the order of the contract table of doc.go. The inputs of each backward op are
// those of its forward's grad method.
const (
	KindUnknown           Kind = iota
	KindLinear                 // x, W → x·Wᵀ
	KindLinearDX               // dy, W → dy·W
	KindLinearDW               // dy, x → dyᵀ·x
	KindRMSNorm                // x, w → y
	KindRMSNormDX              // x, w, dy → dx
	KindRMSNormDW              // x, dy → dw
	KindRoPE                   // x, s → rotated (Inverse: the backward)
	KindSwiGLU                 // a, b → silu(a)·b
	KindSwiGLUGrad             // a, b, dy → packed [da | db]
	KindEmbedding              // E, ids → E[ids]
	KindEmbeddingDW            // ids, dy → dE [Vocab, d]
	KindSoftmaxCE              // logits, targets → scalar mean CE
	KindSoftmaxCEGrad          // logits, targets, dloss → dlogits
	KindSoftmaxKL              // logits, teacher, targets → scalar mean KL
	KindSoftmaxKLGrad          // logits, teacher, targets, dloss → dlogits
	KindDMCDecide              // k, noise, hard → α
	KindDMCDecideGrad          // k, noise, hard, dα → dk
	KindDMCImportance          // q → ω
	KindDMCImportanceGrad      // q, dω → dq
	KindDMCMerge               // x, α, ω → x̃
	KindDMCMergeGrad           // x, α, ω, dx̃ → packed [dx | dα | dω]
	KindAttention              // q, k, v, [α] → o
	KindAttentionGrad          // q, k, v, [α], dO → packed [dq | dk | dv | (dα)]
	KindHardCount              // α → [B] counts
	KindHardCountGrad          // α, g [B] → dα
	KindUnpack                 // packed → the segment at Offset of Shape
)

var kindNames = [...]string{"Unknown", "Linear", "LinearDX", "LinearDW", "RMSNorm", "RMSNormDX", "RMSNormDW", "RoPE",
	"SwiGLU", "SwiGLUGrad", "Embedding", "EmbeddingDW", "SoftmaxCE", "SoftmaxCEGrad", "SoftmaxKL", "SoftmaxKLGrad",
	"DMCDecide", "DMCDecideGrad", "DMCImportance", "DMCImportanceGrad", "DMCMerge", "DMCMergeGrad", "Attention",
	"AttentionGrad", "HardCount", "HardCountGrad", "Unpack"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "Kind?"
	}
	return kindNames[k]
}

// OpInfo describes one op of this package; only the fields of its kind are set.
type OpInfo struct {
	Kind    Kind
	Eps     float64  // RMSNorm*
	RoPE    RoPESpec // RoPE
	Inverse bool     // RoPE: the backward rotation
	DMC     DMCSpec  // DMCDecide*, DMCImportance*, DMCMerge*
	Attn    AttnSpec // Attention*
	SeqLen  int      // HardCount*
	PerHead bool     // HardCount*: counts per (sequence, KV head)
	Vocab   int      // EmbeddingDW
	Offset  int      // Unpack: first element of the segment
	Shape   []int    // Unpack: the segment's shape
}

// Describe returns what op computes when it is one of this package's ops (ok false otherwise:
// gorgonia's own ops, such as the loss head's arithmetic).
func Describe(op G.Op) (OpInfo, bool) {
	f, ok := op.(fused)
	if !ok {
		return OpInfo{}, false
	}
	switch k := f.k.(type) {
	case linearOp:
		return OpInfo{Kind: KindLinear}, true
	case linearDX:
		return OpInfo{Kind: KindLinearDX}, true
	case linearDW:
		return OpInfo{Kind: KindLinearDW}, true
	case rmsNormOp:
		return OpInfo{Kind: KindRMSNorm, Eps: k.eps}, true
	case rmsNormDX:
		return OpInfo{Kind: KindRMSNormDX, Eps: k.eps}, true
	case rmsNormDW:
		return OpInfo{Kind: KindRMSNormDW, Eps: k.eps}, true
	case *ropeOp:
		return OpInfo{Kind: KindRoPE, RoPE: k.spec, Inverse: k.inverse}, true
	case swiGLUOp:
		return OpInfo{Kind: KindSwiGLU}, true
	case swiGLUGrad:
		return OpInfo{Kind: KindSwiGLUGrad}, true
	case embeddingOp:
		return OpInfo{Kind: KindEmbedding}, true
	case embeddingDW:
		return OpInfo{Kind: KindEmbeddingDW, Vocab: k.vocab}, true
	case xentOp:
		return OpInfo{Kind: KindSoftmaxCE}, true
	case xentGrad:
		return OpInfo{Kind: KindSoftmaxCEGrad}, true
	case klOp:
		return OpInfo{Kind: KindSoftmaxKL}, true
	case klGrad:
		return OpInfo{Kind: KindSoftmaxKLGrad}, true
	case decideOp:
		return OpInfo{Kind: pick(k.back, KindDMCDecideGrad, KindDMCDecide), DMC: k.s}, true
	case importanceOp:
		return OpInfo{Kind: pick(k.back, KindDMCImportanceGrad, KindDMCImportance), DMC: k.s}, true
	case mergeOp:
		return OpInfo{Kind: pick(k.back, KindDMCMergeGrad, KindDMCMerge), DMC: k.s}, true
	case attnOp:
		return OpInfo{Kind: pick(k.back, KindAttentionGrad, KindAttention), Attn: k.s}, true
	case hardCountOp:
		return OpInfo{Kind: pick(k.back, KindHardCountGrad, KindHardCount), SeqLen: k.T, PerHead: k.perHead}, true
	case unpack:
		return OpInfo{Kind: KindUnpack, Offset: k.off, Shape: append([]int(nil), k.outDim...)}, true
	}
	return OpInfo{}, false
}

func pick(back bool, yes, no Kind) Kind {
	if back {
		return yes
	}
	return no
}
