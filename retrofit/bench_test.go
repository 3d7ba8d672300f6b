package retrofit

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

func TestParseCRList(t *testing.T) {
	got, err := ParseCRList("1, vanilla,dmc,4")
	if err != nil {
		t.Fatal(err)
	}
	want := []BenchCR{{Label: "vanilla"}, {Label: "vanilla"}, {Label: "dmc", DMC: true}, {Label: "forced-4", DMC: true, ForceCR: 4}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"0", "x", "2.5", ""} {
		if _, err := ParseCRList(bad); err == nil {
			t.Errorf("--cr %q: want an error", bad)
		}
	}
}

func TestParseBatches(t *testing.T) {
	if b, err := ParseBatches("max", 37); err != nil || len(b) != 1 || b[0] != 37 {
		t.Fatalf("max: %v %v", b, err)
	}
	if _, err := ParseBatches("max", 0); err == nil || !strings.Contains(err.Error(), "not even one sequence fits") {
		t.Fatalf("max with nothing fitting: %v", err)
	}
	if b, err := ParseBatches("1,16,64", 5); err != nil || len(b) != 3 || b[2] != 64 {
		t.Fatalf("list: %v %v", b, err)
	}
	if _, err := ParseBatches("1,-2", 5); err == nil {
		t.Fatal("negative batch accepted")
	}
}

// dmc bench decode on an export runs the dmc and forced rows with the export's own DMC block
// (decision channel and offsets), not the reference defaults; vanilla rows have no DMC.
func TestBenchUsesTheExportsDMCBlock(t *testing.T) {
	cfg, err := model.Preset("demo-small")
	if err != nil {
		t.Fatal(err)
	}
	w, err := model.RandomParams[float32](cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	dc := dmc.DefaultConfig()
	dc.DecisionChannel, dc.DecisionOffset, dc.ImportanceOffset, dc.Window = 0, 2, 3, 8
	info := &checkpoints.DMCInfo{Config: dc, TargetCR: 2}
	dir := filepath.Join(t.TempDir(), "export")
	if err := checkpoints.WriteHF(dir, w, "fp32", map[string]any{"dmc": info.ConfigBlock()}, 1<<40); err != nil {
		t.Fatal(err)
	}
	for _, random := range []bool{false, true} {
		p, err := planBench(BenchOptions{Model: dir, RandomWeights: random, CR: "1,dmc,4", Prompt: 8, Gen: 8})
		if err != nil {
			t.Fatal(err)
		}
		if p.opts[0].DMC != nil {
			t.Errorf("vanilla row has DMC settings %+v", p.opts[0].DMC)
		}
		for _, i := range []int{1, 2} {
			got := p.opts[i].DMC
			if got == nil || *got != dc {
				t.Errorf("random=%v row %s: DMC settings %+v, want the export's %+v", random, p.crs[i].Label, got, dc)
			}
		}
		if p.opts[2].ForceCR != 4 {
			t.Errorf("forced row: ForceCR %d", p.opts[2].ForceCR)
		}
	}
	// A model without a dmc block (a preset) benchmarks DMC with the reference defaults.
	p, err := planBench(BenchOptions{Model: "demo-small", RandomWeights: true, CR: "dmc", Prompt: 8, Gen: 8})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.opts[0].DMC; got == nil || *got != dmc.DefaultConfig() {
		t.Errorf("preset: DMC settings %+v, want the defaults", got)
	}
}

func TestBenchCRSlots(t *testing.T) {
	for _, c := range []struct {
		cr   BenchCR
		n    int
		want int
	}{{BenchCR{Label: "vanilla"}, 640, 640}, {BenchCR{DMC: true}, 640, 640}, {BenchCR{ForceCR: 4}, 640, 161}, {BenchCR{ForceCR: 4}, 1, 2},
		// Learned decisions measured at 4× are sized for 3.2× (the margin): ceil(640/3.2)+1.
		{BenchCR{DMC: true, Expect: 4}, 640, 201}, {BenchCR{DMC: true, Expect: 1}, 640, 640}} {
		if got := c.cr.Slots(c.n); got != c.want {
			t.Errorf("%+v.Slots(%d) = %d, want %d", c.cr, c.n, got, c.want)
		}
	}
}

// An export's measured compression sizes the learned-decision rows only, and --data prompts
// are consecutive windows of the data's tokens.
func TestBenchLearnedRowsAndDataPrompts(t *testing.T) {
	dir := "../../shared/assets/tinyllamas-stories260K"
	if _, err := os.Stat(filepath.Join(dir, "stories260K.bin")); err != nil {
		t.Skip("stories260K not present in ../shared/assets")
	}
	w, _, err := checkpoints.Load(filepath.Join(dir, "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	info := &checkpoints.DMCInfo{Config: dmc.DefaultConfig(), TargetCR: 4, AchievedCR: 3.9}
	exp := filepath.Join(t.TempDir(), "export")
	if err := checkpoints.WriteHF(exp, w, "fp32", map[string]any{"dmc": info.ConfigBlock()}, 1<<40); err != nil {
		t.Fatal(err)
	}
	tok, _ := os.ReadFile(filepath.Join(dir, "tok512.bin"))
	if err := os.WriteFile(filepath.Join(exp, "tokenizer.bin"), tok, 0o644); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(t.TempDir(), "prompts.txt")
	if err := os.WriteFile(text, []byte(strings.Repeat("Once upon a time there was a little girl named Lily. She liked to play outside.\n", 20)), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := planBench(BenchOptions{Model: exp, CR: "1,dmc,4", Prompt: 16, Gen: 8, Data: text})
	if err != nil {
		t.Fatal(err)
	}
	if p.crs[0].Expect != 0 || p.crs[1].Expect != 3.9 || p.crs[2].Expect != 0 {
		t.Errorf("expected compression per row: %v, %v, %v; want 0, 3.9 (learned), 0", p.crs[0].Expect, p.crs[1].Expect, p.crs[2].Expect)
	}
	if len(p.prompts) < 2 {
		t.Fatalf("%d prompt windows from 20 lines of text", len(p.prompts))
	}
	for i, pr := range p.prompts {
		if len(pr) != 16 {
			t.Fatalf("prompt %d has %d tokens, want 16", i, len(pr))
		}
	}
	if slices.Equal(p.prompts[0], p.prompts[1]) {
		t.Error("the first two windows are identical: the windows do not advance through the data")
	}
	if _, err := planBench(BenchOptions{Model: "demo-small", RandomWeights: true, CR: "1", Prompt: 16, Gen: 8, Data: text}); err == nil {
		t.Error("--data with random weights was accepted")
	}
}
