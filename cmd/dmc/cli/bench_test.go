package cli

import (
	"strings"
	"testing"

	"github.com/dmc-project/dmc/kernels"
)

// Without the dmc_cuda tag (as in CI) the GPU commands must say how to get CUDA support.
func TestBenchAndGenerateWithoutCUDA(t *testing.T) {
	if kernels.Available() == nil {
		t.Skip("this binary has a working CUDA engine")
	}
	_, stderr, code := run(t, "bench", "decode", "--model", "llama2-7b", "--random-weights")
	if code == 0 || strings.Contains(stderr, "panic") || !strings.Contains(stderr, "dmc:") {
		t.Fatalf("bench: exit %d, stderr %q", code, stderr)
	}
	if kernels.Available() == kernels.ErrNoCUDA && !strings.Contains(stderr, "make build-cuda") {
		t.Fatalf("bench: the error does not say how to rebuild: %q", stderr)
	}
	_, stderr, code = run(t, "bench", "decode", "--model", "llama2-7b", "--cr", "0")
	if code == 0 || !strings.Contains(stderr, "--cr") {
		t.Fatalf("bad --cr: exit %d, stderr %q", code, stderr)
	}
}

func TestGenerateCUDAWithoutCUDA(t *testing.T) {
	dir := needAssets(t, "tinyllamas-stories260K")
	if kernels.Available() == nil {
		t.Skip("this binary has a working CUDA engine")
	}
	_, stderr, code := run(t, "generate", "--device", "cuda", "--model", dir+"/stories260K.bin", "--max-tokens", "4")
	if code == 0 || strings.Contains(stderr, "panic") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
