package model

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/dmc-project/dmc/configs"
)

// RoPELayout says which channels RoPE rotates together.
type RoPELayout string

const (
	// RoPEInterleaved rotates adjacent pairs (2i, 2i+1): llama2.c and Meta's original layout.
	RoPEInterleaved RoPELayout = "interleaved"
	// RoPEHalf rotates (i, i+D/2) ("rotate-half"): the Hugging Face Llama layout.
	RoPEHalf RoPELayout = "half"
)

// Config is a Llama-family architecture.
type Config struct {
	Name          string     `yaml:"name" json:"name,omitempty"`
	Dim           int        `yaml:"dim" json:"dim"`
	HiddenDim     int        `yaml:"hidden_dim" json:"hidden_dim"`
	NLayers       int        `yaml:"n_layers" json:"n_layers"`
	NHeads        int        `yaml:"n_heads" json:"n_heads"`
	NKVHeads      int        `yaml:"n_kv_heads" json:"n_kv_heads"`
	VocabSize     int        `yaml:"vocab_size" json:"vocab_size"`
	MaxSeqLen     int        `yaml:"max_seq_len" json:"max_seq_len"`
	NormEps       float64    `yaml:"norm_eps" json:"norm_eps"`
	RopeTheta     float64    `yaml:"rope_theta" json:"rope_theta"`
	RoPE          RoPELayout `yaml:"rope_layout" json:"rope_layout"`
	TieEmbeddings bool       `yaml:"tie_embeddings" json:"tie_embeddings"`
	// HFRepo is the Hugging Face repo whose weights a preset stands for (looked up in the hub
	// cache by dmc retrofit --model PRESET); empty for shapes without public weights.
	HFRepo string `yaml:"hf_repo,omitempty" json:"hf_repo,omitempty"`
}

// HeadDim is the per-head channel count D.
func (c Config) HeadDim() int { return c.Dim / c.NHeads }

// GroupSize is G = H_q / H_kv, the query heads sharing one KV head.
func (c Config) GroupSize() int { return c.NHeads / c.NKVHeads }

// QDim and KVDim are the widths of the q and k/v projections.
func (c Config) QDim() int  { return c.NHeads * c.HeadDim() }
func (c Config) KVDim() int { return c.NKVHeads * c.HeadDim() }

// Validate reports the first inconsistency in the configuration, in words a user can act on.
func (c Config) Validate() error {
	var errs []string
	pos := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Sprintf("%s must be positive (got %d)", name, v))
		}
	}
	pos("dim", c.Dim)
	pos("hidden_dim", c.HiddenDim)
	pos("n_layers", c.NLayers)
	pos("n_heads", c.NHeads)
	pos("n_kv_heads", c.NKVHeads)
	pos("vocab_size", c.VocabSize)
	pos("max_seq_len", c.MaxSeqLen)
	if len(errs) == 0 {
		if c.Dim%c.NHeads != 0 {
			errs = append(errs, fmt.Sprintf("dim %d is not divisible by n_heads %d", c.Dim, c.NHeads))
		} else if c.HeadDim()%2 != 0 {
			errs = append(errs, fmt.Sprintf("head dim %d must be even for RoPE", c.HeadDim()))
		}
		if c.NHeads%c.NKVHeads != 0 {
			errs = append(errs, fmt.Sprintf("n_heads %d is not a multiple of n_kv_heads %d", c.NHeads, c.NKVHeads))
		}
	}
	if c.NormEps <= 0 || math.IsNaN(c.NormEps) {
		errs = append(errs, fmt.Sprintf("norm_eps must be positive (got %g)", c.NormEps))
	}
	if c.RopeTheta <= 0 {
		errs = append(errs, fmt.Sprintf("rope_theta must be positive (got %g)", c.RopeTheta))
	}
	if c.RoPE != RoPEInterleaved && c.RoPE != RoPEHalf {
		errs = append(errs, fmt.Sprintf("rope_layout must be %q or %q (got %q)", RoPEInterleaved, RoPEHalf, c.RoPE))
	}
	if len(errs) > 0 {
		return errors.New("invalid model config: " + strings.Join(errs, "; "))
	}
	return nil
}

// NumParams counts the parameters (the tied classifier counted once).
func (c Config) NumParams() int64 {
	d, h, v := int64(c.Dim), int64(c.HiddenDim), int64(c.VocabSize)
	q, kv := int64(c.QDim()), int64(c.KVDim())
	perLayer := 2*d + d*q + 2*d*kv + q*d + 3*d*h
	n := v*d + int64(c.NLayers)*perLayer + d
	if !c.TieEmbeddings {
		n += v * d
	}
	return n
}

// KVBytesPerToken is the vanilla KV-cache size of one token over all layers.
func (c Config) KVBytesPerToken(bytesPerElem int) int64 {
	return int64(2*c.NLayers*c.KVDim()) * int64(bytesPerElem)
}

// ParseConfigYAML reads a preset-style YAML configuration and validates it.
func ParseConfigYAML(b []byte) (Config, error) {
	c := Config{NormEps: 1e-5, RopeTheta: 10000, RoPE: RoPEHalf}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("parse model config: %w", err)
	}
	if c.NKVHeads == 0 {
		c.NKVHeads = c.NHeads
	}
	return c, c.Validate()
}

// Preset returns an embedded model preset by name (see configs/models).
func Preset(name string) (Config, error) {
	b, err := configs.Read("models", name)
	if err != nil {
		return Config{}, err
	}
	return ParseConfigYAML(b)
}

// PresetNames lists the embedded presets.
func PresetNames() []string { return configs.Names("models") }
