package trainer

import (
	"encoding/json"

	"github.com/dmc-project/dmc/trainer/step"
)

// The step contract (package step), under the names the trainer has always used.
type (
	Param       = step.Param
	Batch       = step.Batch
	StepContext = step.Context
	Losses      = step.Losses
	Model       = step.Model
)

// Source yields training windows of SeqLen+1 tokens and can save and restore its position
// (package data's packer implements it). Position must describe the state *after* the last
// window returned by Next.
type Source interface {
	Next() (window []int, err error)
	Position() json.RawMessage
	Seek(json.RawMessage) error
}
