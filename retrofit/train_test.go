package retrofit

import (
	"slices"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/graph"
	"github.com/dmc-project/dmc/model"
)

func TestTrainSelection(t *testing.T) {
	cfg := model.Config{Name: "t", Dim: 32, HiddenDim: 48, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 20, MaxSeqLen: 16,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf}
	w, err := model.RandomParams[float32](cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	dc := dmc.DefaultConfig()
	dc.DecisionChannel = 2
	g, err := graph.New(w, dc, 1, 8)
	if err != nil {
		t.Fatal(err)
	}
	ps := g.Params()
	for _, tc := range []struct {
		train        string
		trainedFull  []string // name suffixes trained entirely
		qRows, kRows []int
		err          string
	}{
		{train: "all"},
		{train: ""},
		{train: "attention", trainedFull: []string{"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}},
		{train: "decisions", qRows: []int{2, 10, 18, 26}, kRows: []int{2, 10}},
		{train: "mlp", err: "unknown train"},
	} {
		sel, err := TrainSelection(tc.train, ps, cfg, dc)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("train %q: error %v, want %q", tc.train, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("train %q: %v", tc.train, err)
		}
		if tc.train == "all" || tc.train == "" {
			if sel != nil {
				t.Errorf("train %q: got a selection, want nil (everything)", tc.train)
			}
			continue
		}
		for i, p := range ps {
			full := slices.ContainsFunc(tc.trainedFull, func(s string) bool { return strings.HasSuffix(p.Name, s) })
			switch {
			case full && !sel[i].All:
				t.Errorf("train %s: %s is not trained entirely", tc.train, p.Name)
			case strings.HasSuffix(p.Name, "q_proj.weight") && tc.qRows != nil:
				if !slices.Equal(sel[i].Rows, tc.qRows) {
					t.Errorf("train %s: %s rows %v, want %v", tc.train, p.Name, sel[i].Rows, tc.qRows)
				}
			case strings.HasSuffix(p.Name, "k_proj.weight") && tc.kRows != nil:
				if !slices.Equal(sel[i].Rows, tc.kRows) {
					t.Errorf("train %s: %s rows %v, want %v", tc.train, p.Name, sel[i].Rows, tc.kRows)
				}
			case !full && !sel[i].Frozen():
				t.Errorf("train %s: %s should be frozen, got %+v", tc.train, p.Name, sel[i])
			}
		}
	}
}
