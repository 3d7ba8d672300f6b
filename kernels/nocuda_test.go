//go:build !dmc_cuda

package kernels

import (
	"errors"
	"testing"

	"github.com/dmc-project/dmc/model"
)

func TestWithoutCUDA(t *testing.T) {
	cfg, _ := model.Preset("tiny-1b-gqa")
	if err := Available(); !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("Available: %v", err)
	}
	if _, err := NewRandomEngine(cfg, 1, DefaultOptions()); !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("NewRandomEngine: %v", err)
	}
	if _, err := FitBatch(cfg, DefaultOptions(), 100); !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("FitBatch: %v", err)
	}
}
