package dmctest

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/model"
)

// AssetPath is a file of the shared test assets, which live in ../shared/assets next to the
// repository root; it is resolved from this source file, so any package's tests can use it.
//
// $DMC_ASSETS names another assets folder (for test binaries carried to another machine).
func AssetPath(rel string) string {
	if d := os.Getenv("DMC_ASSETS"); d != "" {
		return filepath.Join(d, rel)
	}
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	return filepath.Join(root, "..", "shared", "assets", rel)
}

// Stories260K returns the real stories260K weights in float64, or skips the test with a clear
// message when the shared assets are absent.
func Stories260K(t testing.TB) *model.Params[float64] {
	t.Helper()
	path := AssetPath("tinyllamas-stories260K/stories260K.bin")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("test asset %s not found (it lives in the shared assets folder next to the repository): %v", path, err)
	}
	w, err := checkpoints.ReadLlama2C(path)
	if err != nil {
		t.Fatalf("load stories260K: %v", err)
	}
	return model.Convert[float64](w)
}
