package dmc

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Config holds the DMC hyper-parameters shared by training and inference. Decode YAML or JSON
// onto DefaultConfig() so that absent fields keep their defaults (a zero Window means "no
// window", not "default").
type Config struct {
	// Window is W, the number of newest tokens of a merge segment that a slot averages over.
	// The reference code uses 12; 0 disables the window (the paper's plain running average).
	Window int `yaml:"window" json:"window"`
	// DecisionChannel is the head-dim channel of q and k repurposed for the decision and the
	// importance. Negative values count from the end: -1 (the default, as in the reference
	// code) is channel D-1; 0 is the variant the paper's text describes.
	DecisionChannel int `yaml:"decision_channel" json:"decision_channel"`
	// DecisionOffset is subtracted from k[ch] to form the decision logit a = k[ch] - offset.
	DecisionOffset float64 `yaml:"decision_offset" json:"decision_offset"`
	// ImportanceOffset is added to the group-mean q[ch] before the sigmoid of the importance.
	ImportanceOffset float64 `yaml:"importance_offset" json:"importance_offset"`
	// Temperature is τ of the Gumbel-sigmoid relaxation used in training.
	Temperature float64 `yaml:"temperature" json:"temperature"`
}

// DefaultConfig is the reference-code configuration: W=12, last channel, offsets 5, τ=0.1.
func DefaultConfig() Config {
	return Config{Window: 12, DecisionChannel: -1, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1}
}

// Validate reports every invalid field, in words a user can act on.
func (c Config) Validate() error {
	var errs []string
	if c.Window < 0 {
		errs = append(errs, fmt.Sprintf("window must be >= 0 (0 = no window; got %d)", c.Window))
	}
	finite := func(name string, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			errs = append(errs, fmt.Sprintf("%s must be a finite number (got %g)", name, v))
		}
	}
	finite("decision_offset", c.DecisionOffset)
	finite("importance_offset", c.ImportanceOffset)
	if !(c.Temperature > 0) || math.IsInf(c.Temperature, 0) {
		errs = append(errs, fmt.Sprintf("temperature must be a positive finite number (got %g; the reference uses 0.1)", c.Temperature))
	}
	if len(errs) > 0 {
		return errors.New("invalid dmc config: " + strings.Join(errs, "; "))
	}
	return nil
}

// CheckHeadDim reports whether the decision channel exists in a head of D channels.
func (c Config) CheckHeadDim(D int) error {
	if ch := c.DecisionChannel; ch >= D || ch < -D {
		return fmt.Errorf("invalid dmc config: decision_channel %d does not exist in a head of %d channels (use 0..%d, or -1 for the last)", ch, D, D-1)
	}
	return nil
}

// Channel resolves DecisionChannel for head dimension D (negative counts from the end). It
// panics when the channel does not exist; CheckHeadDim reports that as an error.
func (c Config) Channel(D int) int {
	if err := c.CheckHeadDim(D); err != nil {
		panic(err)
	}
	if c.DecisionChannel < 0 {
		return D + c.DecisionChannel
	}
	return c.DecisionChannel
}
