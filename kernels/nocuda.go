//go:build !dmc_cuda

package kernels

import "github.com/dmc-project/dmc/model"

// Available reports whether the CUDA engine can run here; in this build it never can.
func Available() error { return ErrNoCUDA }

// NewEngine loads w onto the GPU; in this build it returns ErrNoCUDA.
func NewEngine(w *model.Weights, opt Options) (Engine, error) { return nil, ErrNoCUDA }

// NewRandomEngine draws random bf16 weights on the GPU; in this build it returns ErrNoCUDA.
func NewRandomEngine(cfg model.Config, seed uint64, opt Options) (Engine, error) {
	return nil, ErrNoCUDA
}

// FitBatch is the largest batch that fits; in this build it returns ErrNoCUDA.
func FitBatch(cfg model.Config, opt Options, slotsPerSeq int) (int, error) { return 0, ErrNoCUDA }

// CopyBandwidth measures device copy bandwidth; in this build it returns ErrNoCUDA.
func CopyBandwidth(ordinal int, n int64) (float64, error) { return 0, ErrNoCUDA }

// Profile returns per-op decode timings; in this build there are none.
func Profile(e Engine) map[string]float64 { return nil }

// NCCLGetUniqueID draws an NCCL communicator id; in this build it returns ErrNoCUDA.
func NCCLGetUniqueID() (NCCLUniqueID, error) { return NCCLUniqueID{}, ErrNoCUDA }
