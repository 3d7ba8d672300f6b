//go:build !dmc_cuda

package device

import (
	"errors"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/graph"
)

// Without CUDA, New says how to get it instead of failing obscurely.
func TestNewWithoutCUDA(t *testing.T) {
	w, dc := randomModel(t, 32, 1, 2, 1, 20, 16, false)
	g, err := graph.NewExec(w, dc, 1, 8, graph.Options[float32]{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(g, Options{})
	if !errors.Is(err, ErrNoCUDA) || !strings.Contains(err.Error(), "rebuild with") {
		t.Fatalf("New without CUDA: %v", err)
	}
}
