package kernels

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"sort"
	"testing"
)

// notInConformance are the TrainDevice methods the kernel conformance suite does not call,
// each with what covers it instead.
var notInConformance = map[string]string{
	"FromF64": "an upload (the RoPE tables)",
	"Close":   "no kernel", "Describe": "no kernel", "MemInfo": "no kernel", "Sync": "no kernel, every case",
	"NCCLInit":      "kernels/nccl_test.go and the multi-GPU runs",
	"Gemm":          "through LinearForward, LinearBackwardX and LinearBackwardW",
	"LogisticNoise": "graph/device TestNoiseMatchesHost (against dmc.NoiseKey.Fill)",
}

// methodsCalledIn returns the names of the methods called on a selector ending in ".dev" in
// the Go file at path (the suite's s.dev.X calls).
func methodsCalledIn(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	called := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if inner, ok := sel.X.(*ast.SelectorExpr); ok && inner.Sel.Name == "dev" {
				called[sel.Sel.Name] = true
			}
		}
		return true
	})
	return called
}

// TestEveryDeviceOpHasConformance checks, without a GPU, that each exported method of the
// training device (cuda_train*.go) is exercised by the conformance suite against the Go
// kernels (graph/ops/cuda_conformance_test.go), or named in notInConformance with what
// covers it: a new device op needs its conformance case.
func TestEveryDeviceOpHasConformance(t *testing.T) {
	suite := methodsCalledIn(t, filepath.Join("..", "graph", "ops", "cuda_conformance_test.go"))
	files, err := filepath.Glob("cuda_train*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no cuda_train*.go: %v", err)
	}
	var methods []string
	for _, path := range files {
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv == nil || !fn.Name.IsExported() || len(fn.Recv.List) != 1 {
				continue
			}
			if star, ok := fn.Recv.List[0].Type.(*ast.StarExpr); ok {
				if id, ok := star.X.(*ast.Ident); ok && id.Name == "TrainDevice" {
					methods = append(methods, fn.Name.Name)
				}
			}
		}
	}
	sort.Strings(methods)
	if len(methods) < 40 {
		t.Fatalf("found only %d TrainDevice methods in %v: has the device moved?", len(methods), files)
	}
	for _, m := range methods {
		_, exempt := notInConformance[m]
		switch {
		case suite[m] && exempt:
			t.Errorf("%s is in the conformance suite now: drop it from notInConformance", m)
		case !suite[m] && !exempt:
			t.Errorf("TrainDevice.%s has no conformance case in graph/ops/cuda_conformance_test.go (against the Go kernels)", m)
		}
	}
}
