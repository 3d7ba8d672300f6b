//go:build deps

// Package deps pins modules that are only imported behind build tags (cuda, openblas) or by
// packages still being written, so that `go mod tidy` keeps them in go.mod and go.sum.
package deps

import (
	_ "github.com/apache/arrow/go/v17/arrow/array"
	_ "github.com/apache/arrow/go/v17/arrow/ipc"
	_ "github.com/apache/arrow/go/v17/arrow/memory"
	_ "github.com/apache/arrow/go/v17/parquet/file"
	_ "github.com/apache/arrow/go/v17/parquet/pqarrow"
	_ "github.com/eliben/go-sentencepiece"
	_ "github.com/spf13/cobra"
	_ "github.com/x448/float16"
	_ "google.golang.org/protobuf/encoding/protowire"
	_ "gonum.org/v1/gonum/blas/gonum"
	_ "gonum.org/v1/netlib/blas/netlib"
	_ "gorgonia.org/cu"
	_ "gorgonia.org/gorgonia"
	_ "gorgonia.org/tensor"
)
