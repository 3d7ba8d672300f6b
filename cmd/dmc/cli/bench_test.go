package cli

import (
	"strings"
	"testing"

	"github.com/dmc-project/dmc/kernels"
)

func TestParseCRList(t *testing.T) {
	got, err := parseCRList("1, vanilla,dmc,4")
	if err != nil {
		t.Fatal(err)
	}
	want := []benchCR{{Label: "vanilla"}, {Label: "vanilla"}, {Label: "dmc", DMC: true}, {Label: "forced-4", DMC: true, ForceCR: 4}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"0", "x", "2.5", ""} {
		if _, err := parseCRList(bad); err == nil {
			t.Errorf("--cr %q: want an error", bad)
		}
	}
}

func TestParseBatches(t *testing.T) {
	if b, err := parseBatches("max", 37); err != nil || len(b) != 1 || b[0] != 37 {
		t.Fatalf("max: %v %v", b, err)
	}
	if _, err := parseBatches("max", 0); err == nil || !strings.Contains(err.Error(), "not even one sequence fits") {
		t.Fatalf("max with nothing fitting: %v", err)
	}
	if b, err := parseBatches("1,16,64", 5); err != nil || len(b) != 3 || b[2] != 64 {
		t.Fatalf("list: %v %v", b, err)
	}
	if _, err := parseBatches("1,-2", 5); err == nil {
		t.Fatal("negative batch accepted")
	}
}

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
