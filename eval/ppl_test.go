package eval

import (
	"context"
	"iter"
	"math"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

func docsOf(docs ...[]int32) iter.Seq2[[]int32, error] {
	return func(yield func([]int32, error) bool) {
		for _, d := range docs {
			if !yield(d, nil) {
				return
			}
		}
	}
}

func testModel(t *testing.T) *model.Weights {
	t.Helper()
	cfg := model.Config{Dim: 32, HiddenDim: 48, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 50,
		MaxSeqLen: 32, NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf, TieEmbeddings: true}
	w, err := model.RandomParams[float32](cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

var testDocs = [][]int32{{1, 4, 9, 16, 25, 36, 49, 3, 8}, {1, 2, 3}, {1, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}}

// Perplexity equals exp of the mean token cross-entropy computed one token at a time.
func TestPerplexityMatchesNaiveLoop(t *testing.T) {
	w := testModel(t)
	res, err := Perplexity(context.Background(), w, VanillaCaches(w.Config), docsOf(testDocs...), PPLOptions{SeqLen: 16, Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	m := model.New(w)
	var nll float64
	var n int
	for _, d := range testDocs {
		for s := 0; s+1 < len(d); s += 16 {
			chunk := d[s:min(s+16, len(d))]
			cache := model.NewVanillaCache[float32](w.Config)
			for i := 0; i+1 < len(chunk); i++ {
				logits, _ := m.Forward(cache, []int{int(chunk[i])}, i, false)
				nll += crossEntropy(logits, int(chunk[i+1]))
				n++
			}
		}
	}
	if res.Tokens != n {
		t.Fatalf("scored %d tokens, want %d", res.Tokens, n)
	}
	if math.Abs(res.NLL-nll/float64(n)) > 1e-5 {
		t.Fatalf("NLL %g, naive %g", res.NLL, nll/float64(n))
	}
	if res.CR != 1 || res.CRPerLayer[1] != 1 || res.CRPerHead[0][1] != 1 {
		t.Fatalf("vanilla cache reported CR %g", res.CR)
	}
}

// A DMC cache whose decision rows are zero appends everything: same perplexity as vanilla, CR 1.
// Forcing every other token to merge halves the slots.
func TestPerplexityWithDMCCache(t *testing.T) {
	w := testModel(t)
	dc := dmc.DefaultConfig()
	if err := dmc.ZeroDecisionRows(w, dc); err != nil {
		t.Fatal(err)
	}
	van, err := Perplexity(context.Background(), w, VanillaCaches(w.Config), docsOf(testDocs...), PPLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := Perplexity(context.Background(), w, DMCCaches(w.Config, dc), docsOf(testDocs...), PPLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(van.NLL-d.NLL) > 1e-6 || d.CR != 1 {
		t.Fatalf("zeroed decisions: vanilla NLL %g vs DMC %g, CR %g", van.NLL, d.NLL, d.CR)
	}
	forced := func() (model.KVCache[float32], error) {
		return dmc.NewCompressedCache[float32](w.Config, dc, dmc.WithForcedDecisions(func(l, h, pos int) bool { return pos%2 == 1 }))
	}
	f, err := Perplexity(context.Background(), w, forced, docsOf(testDocs[0]), PPLOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// 8 tokens: positions 1,3,5,7 merge → 4 slots.
	if f.CR != 2 || f.CRPerHead[1][0] != 2 || f.Slots != int64(4*w.Config.NLayers*w.Config.NKVHeads) {
		t.Fatalf("forced merges: CR %g, slots %d", f.CR, f.Slots)
	}
}

func TestPerplexityErrors(t *testing.T) {
	w := testModel(t)
	_, err := Perplexity(context.Background(), w, VanillaCaches(w.Config), docsOf([]int32{1, 99}), PPLOptions{})
	if err == nil || !strings.Contains(err.Error(), "different tokenizer") {
		t.Errorf("out-of-vocabulary data: %v", err)
	}
	_, err = Perplexity(context.Background(), w, VanillaCaches(w.Config), docsOf([]int32{1}), PPLOptions{})
	if err == nil || !strings.Contains(err.Error(), "no sequence") {
		t.Errorf("empty data: %v", err)
	}
}

func TestBudgetForCR(t *testing.T) {
	lengths := []int{100, 100, 50, 10}
	// budget 25: slots 25+25+25+10 = 85 of 260 tokens → 3.06; budget 26: 88 → 2.95.
	if b := BudgetForCR(lengths, 3); b != 25 {
		t.Fatalf("budget for CR 3: %d, want 25", b)
	}
	if b := BudgetForCR(lengths, 1); b != 100 {
		t.Fatalf("budget for CR 1: %d, want 100 (everything kept)", b)
	}
	if b := BudgetForCR(lengths, 1000); b != 0 {
		t.Fatalf("an unreachable CR gave budget %d", b)
	}
}
