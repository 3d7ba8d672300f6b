package retrofit

import (
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// Pooling KV heads that are already equal within each group changes nothing: the GQA model
// computes the same logits as the original.
func TestPoolKVHeadsPreservesEqualGroups(t *testing.T) {
	cfg := model.Config{Dim: 64, HiddenDim: 128, NLayers: 2, NHeads: 8, NKVHeads: 4, VocabSize: 50, MaxSeqLen: 32,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf}
	w, err := model.RandomParams[float32](cfg, 5)
	if err != nil {
		t.Fatal(err)
	}
	D, d := cfg.HeadDim(), cfg.Dim
	for _, l := range w.Layers { // heads 2g and 2g+1 equal
		for g := 0; g < 2; g++ {
			copy(l.Wk[(2*g+1)*D*d:(2*g+2)*D*d], l.Wk[2*g*D*d:(2*g+1)*D*d])
			copy(l.Wv[(2*g+1)*D*d:(2*g+2)*D*d], l.Wv[2*g*D*d:(2*g+1)*D*d])
		}
	}
	p, err := PoolKVHeads(w, 2)
	if err != nil {
		t.Fatal(err)
	}
	if p.Config.NKVHeads != 2 || len(p.Layers[0].Wk) != 2*D*d {
		t.Fatalf("pooled config %+v, Wk %d", p.Config, len(p.Layers[0].Wk))
	}
	toks := []int{1, 7, 3, 9, 22, 4, 4, 31}
	a, err := model.New(w).Forward(model.NewVanillaCache[float32](cfg), toks, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := model.New(p).Forward(model.NewVanillaCache[float32](p.Config), toks, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > 1e-5 {
			t.Fatalf("logit %d: %v before pooling, %v after", i, a[i], b[i])
		}
	}
	for _, c := range []struct {
		kv   int
		want string
	}{{3, "must divide"}, {4, "nothing to pool"}, {0, "must divide"}} {
		if _, err := PoolKVHeads(w, c.kv); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("PoolKVHeads(%d): %v, want %q", c.kv, err, c.want)
		}
	}
	// Written and read back as a checkpoint.
	dir := filepath.Join(t.TempDir(), "src")
	if err := WriteRandomInit(dir, cfg, 5); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "gqa")
	nc, err := ConvertGQA(dir, out, 1)
	if err != nil || nc.NKVHeads != 1 {
		t.Fatalf("ConvertGQA: %+v, %v", nc, err)
	}
	m, err := LoadModel(out, LoadOptions{})
	if err != nil || m.Weights.Config.NKVHeads != 1 {
		t.Fatalf("reading the pooled model back: %v", err)
	}
}
