package model

import (
	"math"
	"strings"
	"testing"
)

func TestPresets(t *testing.T) {
	tests := []struct {
		name   string
		params int64
		kvTok  int64 // bf16 bytes per token
	}{
		{"llama2-7b", 6_738_415_616, 2 * 32 * 4096 * 2},
		{"llama2-13b", 13_015_864_320, 2 * 40 * 5120 * 2},
		{"llama2-70b", 68_976_648_192, 2 * 80 * 1024 * 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Preset(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.NumParams(); got != tc.params {
				t.Errorf("NumParams = %d, want %d", got, tc.params)
			}
			if got := c.KVBytesPerToken(2); got != tc.kvTok {
				t.Errorf("KVBytesPerToken = %d, want %d", got, tc.kvTok)
			}
		})
	}
	for _, name := range PresetNames() {
		if _, err := Preset(name); err != nil {
			t.Errorf("preset %s: %v", name, err)
		}
	}
}

func TestPresetErrors(t *testing.T) {
	_, err := Preset("llama9-1t")
	if err == nil || !strings.Contains(err.Error(), "llama2-7b") {
		t.Fatalf("unknown preset error should list known presets, got %v", err)
	}
	bad := []struct{ yaml, want string }{
		{"dim: 10\nhidden_dim: 4\nn_layers: 1\nn_heads: 3\nvocab_size: 5\nmax_seq_len: 4", "not divisible"},
		{"dim: 8\nhidden_dim: 4\nn_layers: 1\nn_heads: 2\nn_kv_heads: 3\nvocab_size: 5\nmax_seq_len: 4", "multiple"},
		{"dim: 8\nhidden_dim: 4\nn_layers: 0\nn_heads: 2\nvocab_size: 5\nmax_seq_len: 4", "n_layers must be positive"},
		{"dim: 8\nhidden: 4\n", "field hidden not found"},
		{"dim: 8\nhidden_dim: 4\nn_layers: 1\nn_heads: 2\nvocab_size: 5\nmax_seq_len: 4\nrope_layout: spiral", "rope_layout"},
	}
	for _, tc := range bad {
		if _, err := ParseConfigYAML([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfigYAML(%q) error = %v, want it to mention %q", tc.yaml, err, tc.want)
		}
	}
}

func tinyConfig(layout RoPELayout, kv int, tied bool) Config {
	return Config{Dim: 24, HiddenDim: 40, NLayers: 2, NHeads: 4, NKVHeads: kv, VocabSize: 37,
		MaxSeqLen: 64, NormEps: 1e-5, RopeTheta: 10000, RoPE: layout, TieEmbeddings: tied}
}

func maxAbsDiff[T Float](a, b []T) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		m = max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

var testTokens = []int{1, 5, 9, 13, 2, 30, 7, 7, 21, 0, 36, 4}

// Batched prefill must be the same computation as feeding tokens one at a time.
func TestPrefillEqualsStepwiseDecode(t *testing.T) {
	for _, tied := range []bool{true, false} {
		p, err := RandomParams[float64](tinyConfig(RoPEHalf, 2, tied), 7)
		if err != nil {
			t.Fatal(err)
		}
		m := New(p)
		all, err := m.Forward(NewVanillaCache[float64](p.Config), testTokens, 0, true)
		if err != nil {
			t.Fatal(err)
		}
		cache := NewVanillaCache[float64](p.Config)
		V := p.Config.VocabSize
		for i, tok := range testTokens {
			step, err := m.Forward(cache, []int{tok}, i, false)
			if err != nil {
				t.Fatal(err)
			}
			if d := maxAbsDiff(step, all[i*V:(i+1)*V]); d > 1e-12 {
				t.Fatalf("tied=%v token %d: stepwise vs prefill logits differ by %g", tied, i, d)
			}
		}
	}
}

// An interleaved-RoPE model equals the rotate-half model whose q/k rows are permuted per head
// (even channels first, then odd), which is how llama2.c/Meta weights map onto HF weights.
func TestRoPELayoutsAgreeUnderPermutation(t *testing.T) {
	cfgI := tinyConfig(RoPEInterleaved, 2, true)
	pi, _ := RandomParams[float64](cfgI, 3)
	cfgH := cfgI
	cfgH.RoPE = RoPEHalf
	ph := Convert[float64](pi)
	ph.Config = cfgH
	D := cfgI.HeadDim()
	permute := func(w []float64, heads int) {
		d := cfgI.Dim
		out := make([]float64, len(w))
		for h := 0; h < heads; h++ {
			for i := 0; i < D/2; i++ {
				copy(out[(h*D+i)*d:(h*D+i+1)*d], w[(h*D+2*i)*d:(h*D+2*i+1)*d])
				copy(out[(h*D+D/2+i)*d:(h*D+D/2+i+1)*d], w[(h*D+2*i+1)*d:(h*D+2*i+2)*d])
			}
		}
		copy(w, out)
	}
	for i := range ph.Layers {
		permute(ph.Layers[i].Wq, cfgI.NHeads)
		permute(ph.Layers[i].Wk, cfgI.NKVHeads)
	}
	a, err := New(pi).Forward(NewVanillaCache[float64](cfgI), testTokens, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(ph).Forward(NewVanillaCache[float64](cfgH), testTokens, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(a, b); d > 1e-12 {
		t.Fatalf("layouts differ by %g", d)
	}
}

// A GQA model equals the multi-head model whose K/V projections repeat each KV head G times.
func TestGQAEqualsRepeatedHeads(t *testing.T) {
	cfg := tinyConfig(RoPEInterleaved, 2, false)
	gqa, _ := RandomParams[float64](cfg, 11)
	mhaCfg := cfg
	mhaCfg.NKVHeads = cfg.NHeads
	mha := Convert[float64](gqa)
	mha.Config = mhaCfg
	D, d, G := cfg.HeadDim(), cfg.Dim, cfg.GroupSize()
	for i := range mha.Layers {
		rep := func(w []float64) []float64 {
			out := make([]float64, 0, cfg.NHeads*D*d)
			for h := 0; h < cfg.NHeads; h++ {
				out = append(out, w[(h/G)*D*d:(h/G+1)*D*d]...)
			}
			return out
		}
		mha.Layers[i].Wk = rep(gqa.Layers[i].Wk)
		mha.Layers[i].Wv = rep(gqa.Layers[i].Wv)
	}
	a, _ := New(gqa).Forward(NewVanillaCache[float64](cfg), testTokens, 0, true)
	b, _ := New(mha).Forward(NewVanillaCache[float64](mhaCfg), testTokens, 0, true)
	if d := maxAbsDiff(a, b); d > 1e-12 {
		t.Fatalf("GQA vs repeated MHA differ by %g", d)
	}
}

// float32 inference tracks the float64 reference.
func TestFloat32MatchesFloat64(t *testing.T) {
	p64, _ := RandomParams[float64](tinyConfig(RoPEHalf, 1, true), 5)
	p32 := Convert[float32](p64)
	a, _ := New(p64).Forward(NewVanillaCache[float64](p64.Config), testTokens, 0, true)
	b, _ := New(p32).Forward(NewVanillaCache[float32](p32.Config), testTokens, 0, true)
	for i := range a {
		if math.Abs(a[i]-float64(b[i])) > 1e-5 {
			t.Fatalf("logit %d: float64 %g vs float32 %g", i, a[i], b[i])
		}
	}
}

func TestForwardErrors(t *testing.T) {
	p, _ := RandomParams[float32](tinyConfig(RoPEHalf, 2, true), 1)
	m := New(p)
	cases := []struct {
		tokens []int
		pos    int
		want   string
	}{
		{[]int{1, 99}, 0, "outside the vocabulary"},
		{[]int{-1}, 0, "outside the vocabulary"},
		{[]int{1}, 64, "max_seq_len"},
		{nil, 0, "no tokens"},
	}
	for _, tc := range cases {
		_, err := m.Forward(NewVanillaCache[float32](p.Config), tc.tokens, tc.pos, false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Forward(%v, %d) error = %v, want %q", tc.tokens, tc.pos, err, tc.want)
		}
	}
}

func TestRotatePreservesNormAndIsRelative(t *testing.T) {
	for _, layout := range []RoPELayout{RoPEInterleaved, RoPEHalf} {
		r := NewRoPE(tinyConfig(layout, 2, true))
		q := []float64{0.3, -1, 2, 0.5, 0.1, -0.7}
		k := []float64{1, 0.2, -0.4, 0.9, -1.5, 0.25}
		// <R(m)q, R(n)k> depends only on m - n.
		dot := func(m, n int) float64 {
			a, b := append([]float64(nil), q...), append([]float64(nil), k...)
			Rotate(r, a, m)
			Rotate(r, b, n)
			return Dot(a, b)
		}
		if d := math.Abs(dot(7, 3) - dot(14, 10)); d > 1e-12 {
			t.Errorf("%s: rotation not relative (%g)", layout, d)
		}
		a := append([]float64(nil), q...)
		Rotate(r, a, 123)
		if d := math.Abs(Dot(a, a) - Dot(q, q)); d > 1e-12 {
			t.Errorf("%s: rotation changed the norm by %g", layout, d)
		}
		for c := 0; c < 6; c++ {
			if r.Partner(r.Partner(c)) != c || r.Partner(c) == c {
				t.Errorf("%s: bad partner of %d", layout, c)
			}
		}
	}
}

func TestSampler(t *testing.T) {
	logits := []float32{0.1, 2.5, -1, 2.4}
	if got := Sample(NewSampler(0, 0, 1), logits); got != 1 {
		t.Fatalf("greedy picked %d, want 1", got)
	}
	draw := func(seed uint64, topP float64) []int {
		s := NewSampler(1, topP, seed)
		out := make([]int, 2000)
		for i := range out {
			out[i] = Sample(s, logits)
		}
		return out
	}
	a, b := draw(9, 0), draw(9, 0)
	counts := make([]int, 4)
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("same seed gave different samples")
		}
		counts[a[i]]++
	}
	var z float64
	for _, l := range logits {
		z += math.Exp(float64(l))
	}
	for i, l := range logits {
		want := math.Exp(float64(l)) / z * 2000
		if math.Abs(float64(counts[i])-want) > 5*math.Sqrt(want)+5 {
			t.Errorf("token %d drawn %d times, expected about %.0f", i, counts[i], want)
		}
	}
	for _, id := range draw(3, 0.5) {
		if id != 1 && id != 3 {
			t.Fatalf("top-p 0.5 drew token %d outside the nucleus {1,3}", id)
		}
	}
}
