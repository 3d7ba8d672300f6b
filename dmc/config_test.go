package dmc

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	want := Config{Window: 12, DecisionChannel: -1, DecisionOffset: 5, ImportanceOffset: 5, Temperature: 0.1}
	if c != want {
		t.Fatalf("DefaultConfig() = %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"default", func(*Config) {}, ""},
		{"no window", func(c *Config) { c.Window = 0 }, ""},
		{"paper channel", func(c *Config) { c.DecisionChannel = 0 }, ""},
		{"negative window", func(c *Config) { c.Window = -1 }, "window must be >= 0"},
		{"zero temperature", func(c *Config) { c.Temperature = 0 }, "temperature must be a positive"},
		{"nan temperature", func(c *Config) { c.Temperature = math.NaN() }, "temperature must be a positive"},
		{"inf offset", func(c *Config) { c.DecisionOffset = math.Inf(1) }, "decision_offset must be a finite"},
		{"nan importance offset", func(c *Config) { c.ImportanceOffset = math.NaN() }, "importance_offset must be a finite"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestChannel(t *testing.T) {
	tests := []struct {
		ch, D, want int
		ok          bool
	}{
		{-1, 8, 7, true}, {0, 8, 0, true}, {-2, 8, 6, true}, {7, 8, 7, true},
		{8, 8, 0, false}, {-9, 8, 0, false}, {-1, 128, 127, true},
	}
	for _, tc := range tests {
		c := Config{DecisionChannel: tc.ch}
		err := c.CheckHeadDim(tc.D)
		if (err == nil) != tc.ok {
			t.Fatalf("CheckHeadDim(ch=%d, D=%d) = %v, want ok=%v", tc.ch, tc.D, err, tc.ok)
		}
		if tc.ok {
			if got := c.Channel(tc.D); got != tc.want {
				t.Fatalf("Channel(ch=%d, D=%d) = %d, want %d", tc.ch, tc.D, got, tc.want)
			}
		}
	}
}

// TestConfigDecode checks the YAML/JSON field names (used by recipes) and that decoding onto
// DefaultConfig keeps the fields a file leaves out.
func TestConfigDecode(t *testing.T) {
	c := DefaultConfig()
	if err := yaml.Unmarshal([]byte("window: 0\ndecision_channel: 0\n"), &c); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Window, want.DecisionChannel = 0, 0
	if c != want {
		t.Fatalf("yaml decode = %+v, want %+v", c, want)
	}
	b, err := json.Marshal(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	const wantJSON = `{"window":12,"decision_channel":-1,"decision_offset":5,"importance_offset":5,"temperature":0.1}`
	if string(b) != wantJSON {
		t.Fatalf("json = %s, want %s", b, wantJSON)
	}
}
