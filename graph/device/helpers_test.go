package device

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/trainer/step"
)

// randomModel is a GQA Llama with O(1) activations and a decision channel that merges often.
func randomModel(t testing.TB, dim, layers, hq, hkv, vocab, seq int, tie bool) (*model.Weights, dmc.Config) {
	t.Helper()
	mc := model.Config{Name: "rand", Dim: dim, HiddenDim: dim * 3 / 2, NLayers: layers, NHeads: hq, NKVHeads: hkv, VocabSize: vocab,
		MaxSeqLen: seq, NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf, TieEmbeddings: tie}
	p, err := model.RandomParams[float32](mc, 7)
	if err != nil {
		t.Fatal(err)
	}
	D := mc.HeadDim()
	for i := range p.Embed {
		p.Embed[i] *= 10
	}
	for li := range p.Layers {
		L := &p.Layers[li]
		for _, w := range [][]float32{L.Wq, L.Wk, L.Wv, L.Wo, L.W1, L.W2, L.W3} {
			for i := range w {
				w[i] *= 3
			}
		}
		// Decision channel ch = D-1 of every KV head: a row that sees a constant-ish input.
		for h := 0; h < hkv; h++ {
			row := L.Wk[(h*D+D-1)*dim : (h*D+D)*dim]
			for i := range row {
				row[i] *= 3
			}
		}
	}
	dc := dmc.DefaultConfig()
	dc.DecisionChannel = D - 1
	dc.DecisionOffset = 0.5
	dc.Window = 12
	return p, dc
}

func batchOf(rng *rand.Rand, B, T, V int) step.Batch {
	b := step.Batch{BatchSize: B, SeqLen: T, Inputs: make([]int, B*T), Targets: make([]int, B*T)}
	for i := range b.Inputs {
		b.Inputs[i] = rng.IntN(V)
		b.Targets[i] = rng.IntN(V)
		if rng.IntN(9) == 0 {
			b.Targets[i] = -1
		}
	}
	return b
}

// relErr is ‖a−b‖/‖b‖ in float64.
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}
