package layers

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/dmc-project/dmc/"

// floors, top to bottom: cmd → retrofit → {the training graph, serve} → {trainer, checkpoints, eval,
// kernels} → dmc → model → {data, configs}; floor 0 holds leaves any package may use (the step
// contract, small shared utilities). A package's floor is that of its longest listed prefix.
var floors = []struct {
	prefix string
	floor  int
}{
	{"cmd", 7},
	{"retrofit", 6},
	{"graph", 5}, {"serve", 5},
	{"trainer", 4}, {"checkpoints", 4}, {"eval", 4}, {"kernels", 4},
	{"dmc", 3},
	{"model", 2},
	{"data", 1}, {"configs", 1},
	{"trainer/step", 0}, {"internal/atomicfile", 0}, {"internal/splitmix", 0},
	{"internal/dmctest", 4}, // test helper: loads checkpoints
	{"internal/layers", 0},
}

func floorOf(t *testing.T, pkg string) int {
	rel := strings.TrimPrefix(pkg, module)
	best, floor := -1, -1
	for _, f := range floors {
		if (rel == f.prefix || strings.HasPrefix(rel, f.prefix+"/")) && len(f.prefix) > best {
			best, floor = len(f.prefix), f.floor
		}
	}
	if floor < 0 {
		t.Errorf("package %s has no floor: add its folder to floors in %s", pkg, "internal/layers/layers_test.go")
	}
	return floor
}

type listed struct {
	ImportPath string
	Imports    []string
	CgoFiles   []string
}

func goList(t *testing.T, tags string) []listed {
	t.Helper()
	args := []string{"list", "-json"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, module+"...")...)
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("go list is not available here: %v", err)
	}
	var pkgs []listed
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// No package imports one on a higher floor, in any build (default, CUDA, OpenBLAS).
func TestImportsRunDownward(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	for _, tags := range []string{"", "dmc_cuda,openblas"} {
		for _, p := range goList(t, tags) {
			from := floorOf(t, p.ImportPath)
			for _, imp := range p.Imports {
				if !strings.HasPrefix(imp, module) {
					continue
				}
				if to := floorOf(t, imp); to > from {
					t.Errorf("tags %q: %s (floor %d) imports %s (floor %d): imports must run downward", tags, p.ImportPath, from, imp, to)
				}
			}
		}
	}
}

// cgo lives only in kernels (the CUDA engine, tag dmc_cuda) and the graph's OpenBLAS file.
func TestCgoOnlyInKernelsAndOpenBLAS(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	allowed := map[string]bool{module + "kernels": true, module + "graph/blas_openblas.go": true}
	for _, tags := range []string{"", "dmc_cuda,openblas"} {
		for _, p := range goList(t, tags) {
			for _, f := range p.CgoFiles {
				if !allowed[p.ImportPath] && !allowed[p.ImportPath+"/"+f] {
					t.Errorf("tags %q: %s uses cgo in %s; cgo belongs in kernels/ (or the OpenBLAS file)", tags, p.ImportPath, f)
				}
			}
		}
	}
}
