//go:build !dmc_cuda

package device

import (
	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer/step"
)

// ErrNoCUDA is returned by New in builds without the dmc_cuda tag.
var ErrNoCUDA = kernels.ErrNoCUDA

// devBuf stands for a device buffer in the planner's values; this build binds none.
type devBuf = struct{}

// Model is the GPU executor; in this build it cannot be created.
type Model struct{}

// Options configure the executor.
type Options struct {
	Ordinal   int            // GPU ordinal
	FP32GEMM  bool           // fp32 GEMM operands (parity tests)
	Train     []step.Trained // what is trained (nil: all)
	Recompute bool           // recompute activations per layer in the backward
	Switches  *PlanSwitches  // the schedule's switches (nil: the DMC_* environment's)
}

// New fails: this build has no CUDA.
func New(g *graph.Graph, opt Options) (*Model, error) { return nil, ErrNoCUDA }

func (*Model) Params() []step.Param                                  { return nil }
func (*Model) Step(step.Batch, step.Context) (step.Losses, error)    { return step.Losses{}, ErrNoCUDA }
func (*Model) Forward(step.Batch, step.Context) (step.Losses, error) { return step.Losses{}, ErrNoCUDA }

// Describe names the device (none in this build).
func (*Model) Describe() string { return "no CUDA in this build" }

// Weights fails: this build has no CUDA.
func (*Model) Weights() (*model.Weights, error) { return nil, ErrNoCUDA }

// Close releases nothing.
func (*Model) Close() {}

// MemInfo reports nothing in this build.
func (*Model) MemInfo() (free, total int64) { return 0, 0 }

// Sync does nothing in this build.
func (*Model) Sync() error { return ErrNoCUDA }

// Update fails: this build has no CUDA.
func (*Model) Update(step.AdamW, int, float64, float64) (float64, error) { return 0, ErrNoCUDA }

// ArenaBytes is 0 in this build.
func (*Model) ArenaBytes() int64 { return 0 }

// Profile does nothing in this build.
func (*Model) Profile(bool) {}

// ProfileReport is empty in this build.
func (*Model) ProfileReport() string { return "" }

// JoinGroup joins a data-parallel group; in this build it returns ErrNoCUDA.
func (*Model) JoinGroup(kernels.NCCLUniqueID, int, int) error { return ErrNoCUDA }

// GroupSize is 1 in this build.
func (*Model) GroupSize() int { return 1 }

// GroupComm is the model's group; in this build every reduction fails.
func (m *Model) GroupComm() *GroupComm { return &GroupComm{} }

// GroupComm is the model's group as trainer.Comm (no CUDA in this build).
type GroupComm struct{}

func (*GroupComm) Rank() int                      { return 0 }
func (*GroupComm) Size() int                      { return 1 }
func (*GroupComm) AllReduceSum([][]float32) error { return ErrNoCUDA }
func (*GroupComm) AllReduceSum64([]float64) error { return ErrNoCUDA }
func (*GroupComm) Abort(error)                    {}
