package kernels

// The training device's types, in every build: the CUDA executor's planner (graph/device)
// works with them without a GPU.

// DType is the element type of a device buffer.
type DType int

const (
	F32  DType = iota // float32: activations, gradients, master weights, optimiser moments
	BF16              // bfloat16: GEMM operands
	I32               // int32: token ids, targets, index tables
	F64               // float64: RoPE tables, norm partial sums
)

// Size is the bytes of one element.
func (t DType) Size() int { return t.size() }

func (t DType) size() int {
	switch t {
	case BF16:
		return 2
	case F64:
		return 8
	}
	return 4
}

func (t DType) String() string { return [...]string{"f32", "bf16", "i32", "f64"}[t] }

// EwOp is an element-wise operation of EW.
type EwOp int

const (
	EwAdd EwOp = iota
	EwSub
	EwMul
	EwDiv
	EwGE // 1 where a ≥ b, else 0
	EwNeg
	EwCopy
	EwReLU
)

// NCCLUniqueID names an NCCL communicator: rank 0 draws it (NCCLGetUniqueID) and hands it to
// the other ranks (an environment variable, a rendezvous address); every rank then calls
// TrainDevice.NCCLInit with it.
type NCCLUniqueID [128]byte

// TensorCoreAttention reports whether the GPU trainer's attention runs on the bf16
// tensor-core kernels for head dimension d (when TensorCores is set); other head dimensions
// take the exact fp32 kernels.
func TensorCoreAttention(d int) bool {
	return d == 16 || d == 32 || d == 64 || d == 128
}
