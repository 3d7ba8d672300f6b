package retrofit

import (
	"context"
	"iter"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
)

func calibrationDocs(vocab int) func() iter.Seq2[[]int32, error] {
	rng := rand.New(rand.NewPCG(1, 2))
	var docs [][]int32
	for range 6 {
		d := make([]int32, 64)
		for i := range d {
			d[i] = int32(rng.IntN(vocab))
		}
		docs = append(docs, d)
	}
	return func() iter.Seq2[[]int32, error] {
		return func(yield func([]int32, error) bool) {
			for _, d := range docs {
				if !yield(d, nil) {
					return
				}
			}
		}
	}
}

// The offset found compresses the documents by the target, whichever side of it the starting
// offset is on, and the evaluation returned is the one at that offset.
func TestCalibrateOffset(t *testing.T) {
	cfg := model.Config{Dim: 32, HiddenDim: 48, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 50, MaxSeqLen: 64,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf, TieEmbeddings: true}
	w, err := model.RandomParams[float32](cfg, 7)
	if err != nil {
		t.Fatal(err)
	}
	docs := calibrationDocs(cfg.VocabSize)
	for _, tc := range []struct {
		start, target float64
	}{{5, 2}, {-3, 2}, {0, 3}} {
		dc := dmc.DefaultConfig()
		dc.DecisionOffset = tc.start
		c, r, err := CalibrateOffset(context.Background(), w, dc, docs, tc.target, CalibrateOptions{Tol: 0.02, Steps: 30})
		if err != nil {
			t.Fatalf("start %g target %g: %v", tc.start, tc.target, err)
		}
		if math.Abs(r.CR/tc.target-1) > 0.02 {
			t.Errorf("start %g target %g: offset %g gives CR %g", tc.start, tc.target, c.DecisionOffset, r.CR)
		}
		check, err := eval.Perplexity(context.Background(), w, eval.DMCCaches(cfg, c), docs(), eval.PPLOptions{})
		if err != nil || check.CR != r.CR || check.PPL != r.PPL {
			t.Errorf("start %g: the returned evaluation (CR %g) is not the offset's (%v, %v)", tc.start, r.CR, check, err)
		}
		if c.Window != dc.Window || c.DecisionChannel != dc.DecisionChannel {
			t.Errorf("calibration changed more than the offset: %+v", c)
		}
	}
	if _, _, err := CalibrateOffset(context.Background(), w, dmc.DefaultConfig(), docs, 1, CalibrateOptions{}); err == nil || !strings.Contains(err.Error(), "must be > 1") {
		t.Errorf("target 1: %v", err)
	}
}
