package eval

import (
	"cmp"
	"context"
	"iter"
	"math"
	"slices"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// Removing a channel whose RoPE pair carries nothing (rows zero in W_q and W_k) costs nothing,
// removing one that carries something does not; the cheapest is recommended and the weights come
// back intact.
func TestChannelAblation(t *testing.T) {
	w := testModel(t) // rotate-half RoPE, head dim 8: channel 2 pairs with 6
	D := w.Config.HeadDim()
	for i := range w.Layers { // sharpen attention so that every channel matters
		for _, m := range [][]float32{w.Layers[i].Wq, w.Layers[i].Wk, w.Layers[i].Wv} {
			for j := range m {
				m[j] *= 6
			}
		}
	}
	for _, ch := range []int{2, 2 + D/2} {
		cfg := dmc.DefaultConfig()
		cfg.DecisionChannel = ch
		if err := dmc.ZeroDecisionRows(w, cfg); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshot(w)
	docs := func() iter.Seq2[[]int32, error] { return docsOf(testDocs...) }
	var seen []int
	res, err := ChannelAblation(context.Background(), w, docs, PPLOptions{SeqLen: 16}, func(c int, _ *PPLResult) { seen = append(seen, c) })
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{-1, 0, 1, 2, 3, 4, 5, 6, 7}; !slices.Equal(seen, want) {
		t.Errorf("progress saw channels %v, want %v", seen, want)
	}
	if len(res.PerChannel) != D {
		t.Fatalf("%d channels measured, want %d", len(res.PerChannel), D)
	}
	for _, c := range res.PerChannel {
		if math.Abs(c.Increase-(c.PPL/res.BasePPL-1)) > 1e-12 {
			t.Errorf("channel %d: increase %g inconsistent with ppl %g / base %g", c.Channel, c.Increase, c.PPL, res.BasePPL)
		}
	}
	if got := res.PerChannel[2].PPL; math.Abs(got/res.BasePPL-1) > 1e-5 {
		t.Errorf("channel 2 carries nothing, but removing it moved ppl %g -> %g", res.BasePPL, got)
	}
	best := slices.MinFunc(res.PerChannel, func(a, b ChannelCost) int { return cmp.Compare(a.PPL, b.PPL) })
	if res.Recommended != best.Channel {
		t.Errorf("recommended channel %d, but channel %d costs least: %+v", res.Recommended, best.Channel, res.PerChannel)
	}
	if math.Abs(res.PerChannel[0].Increase) < 1e-4 {
		t.Errorf("removing channel 0 changed nothing (%g vs %g): the ablation did not take effect", res.PerChannel[0].PPL, res.BasePPL)
	}
	if after := snapshot(w); !slices.Equal(before, after) {
		t.Error("ChannelAblation did not restore the weights")
	}
}

func snapshot(w *model.Weights) []float32 {
	var out []float32
	for _, tn := range w.Tensors() {
		out = append(out, tn.Data...)
	}
	return out
}
