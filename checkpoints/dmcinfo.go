package checkpoints

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dmc-project/dmc/dmc"
)

// DMCInfo is the "dmc" block of an exported model's config.json. Standard Hugging Face loaders
// ignore it; dmc generate/eval and the CUDA engine read it to decode with the compressed cache.
type DMCInfo struct {
	dmc.Config
	// TargetCR is the compression rate the retrofit trained for.
	TargetCR float64 `json:"target_cr"`
	// AchievedCR is the real tokens/slots ratio measured by dmc eval at export time (0 if not
	// measured), overall, per layer and per (layer, KV head).
	AchievedCR      float64     `json:"achieved_cr,omitempty"`
	AchievedByLayer []float64   `json:"achieved_cr_per_layer,omitempty"`
	AchievedByHead  [][]float64 `json:"achieved_cr_per_head,omitempty"`
	// TrainedSteps is the number of optimiser steps of the retrofit.
	TrainedSteps int `json:"trained_steps,omitempty"`
	// TrainedDecisionOffset is the decision offset the run trained with, when dmc export
	// --calibrate-cr moved decision_offset to where the hard decisions reach TargetCR.
	TrainedDecisionOffset *float64 `json:"trained_decision_offset,omitempty"`
}

// ReadDMCInfo returns the "dmc" block of the config.json in dir (or next to a file path), or
// nil when the model is not a DMC model.
func ReadDMCInfo(path string) (*DMCInfo, error) {
	dir := path
	if st, err := os.Stat(path); err == nil && !st.IsDir() {
		dir = filepath.Dir(path)
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var top struct {
		DMC json.RawMessage `json:"dmc"`
	}
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "config.json"), err)
	}
	if len(top.DMC) == 0 || string(top.DMC) == "null" {
		return nil, nil
	}
	info := &DMCInfo{Config: dmc.DefaultConfig()}
	if err := json.Unmarshal(top.DMC, info); err != nil {
		return nil, fmt.Errorf("%s: the \"dmc\" block is malformed: %w", filepath.Join(dir, "config.json"), err)
	}
	if err := info.Config.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "config.json"), err)
	}
	return info, nil
}

// ConfigBlock returns the value to put under "dmc" in config.json (see WriteHF's extraConfig).
func (d *DMCInfo) ConfigBlock() map[string]any {
	b, _ := json.Marshal(d)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}
