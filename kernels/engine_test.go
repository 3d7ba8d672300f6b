package kernels

import (
	"strings"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

func TestOptionsValidate(t *testing.T) {
	cfg, err := model.Preset("tiny-1b-gqa")
	if err != nil {
		t.Fatal(err)
	}
	o, err := DefaultOptions().WithDMC(dmc.DefaultConfig()).validate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if o.DMC.DecisionChannel != cfg.HeadDim()-1 || o.MaxContext != cfg.MaxSeqLen || o.PrefillTokens < o.MaxContext || o.MaxBatch != 1 {
		t.Fatalf("defaults not resolved: %+v", o)
	}
	odd := cfg
	odd.Dim, odd.NHeads, odd.NKVHeads = 96*4, 4, 4 // head dim 96
	tests := []struct {
		name string
		cfg  model.Config
		mod  func(*Options)
		want string
	}{
		{"head dim", odd, func(*Options) {}, "head dim 96"},
		{"channel", cfg, func(o *Options) { o.DMC.DecisionChannel = 64 }, "decision_channel"},
		{"window", cfg, func(o *Options) { o.DMC.Window = -1 }, "window"},
		{"forced without DMC", cfg, func(o *Options) { o.DMC, o.ForceCR = nil, 4 }, "needs the DMC cache"},
	}
	for _, tc := range tests {
		o := DefaultOptions().WithDMC(dmc.DefaultConfig())
		tc.mod(&o)
		if _, err := o.validate(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestCacheStats(t *testing.T) {
	s := CacheStats{Tokens: 800, Slots: 100, PagesUsed: 8, PageTokens: 16}
	if s.CR() != 8 {
		t.Errorf("CR %g", s.CR())
	}
	if w := s.PageWaste(); w < 0.2187 || w > 0.2188 {
		t.Errorf("page waste %g, want 1-100/128", w)
	}
	if (CacheStats{}).CR() != 0 || (CacheStats{}).PageWaste() != 0 {
		t.Error("empty stats must report 0")
	}
}
