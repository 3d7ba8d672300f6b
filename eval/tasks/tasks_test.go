package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/internal/dmctest"
)

// fakeScorer returns a fixed log-likelihood per continuation (and per context when given).
type fakeScorer struct {
	ll     map[string]float64
	greedy map[string]bool
}

func (f fakeScorer) LogLikelihood(r Request) (float64, bool, error) {
	if v, ok := f.ll[r.Context+"|"+r.Continuation]; ok {
		return v, f.greedy[r.Continuation], nil
	}
	return f.ll[r.Continuation], f.greedy[r.Continuation], nil
}

func mc(ctx string, gold int, choices ...string) Item {
	it := Item{Gold: gold, Source: ctx}
	for _, c := range choices {
		it.Requests = append(it.Requests, choice(ctx, c))
	}
	return it
}

// acc takes the largest summed log-likelihood; acc_norm divides by the continuation's length in
// characters first, so a long choice can lose on acc and win on acc_norm.
func TestScoreAccAndAccNorm(t *testing.T) {
	task := &Task{Name: "hand", Version: "1.0", Norm: true}
	items := []Item{
		// acc_norm divides by the choice's characters without the delimiter (a: 1, b: 10, …).
		mc("q1", 0, "a", "bbbbbbbbbb"), // a −2 (norm −2), b −3 (−0.3): acc right, norm wrong
		mc("q2", 1, "ccc", "dddddddd"), // c −1 (−0.33), d −4 (−0.5): both wrong
		mc("q3", 1, "ee", "fffff"),     // e −5 (−2.5), f −1 (−0.2): both right
	}
	s := fakeScorer{ll: map[string]float64{" a": -2, " bbbbbbbbbb": -3, " ccc": -1, " dddddddd": -4, " ee": -5, " fffff": -1}}
	res, err := Score(task, items, nil, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// acc: q1 right, q2 wrong, q3 right → 2/3; acc_norm: only q3 → 1/3.
	wantAcc, wantNorm := 2.0/3, 1.0/3
	if math.Abs(res.Acc.Value-wantAcc) > 1e-12 || math.Abs(res.AccNorm.Value-wantNorm) > 1e-12 {
		t.Fatalf("acc %v acc_norm %v, want %v %v", res.Acc.Value, res.AccNorm.Value, wantAcc, wantNorm)
	}
	// lm-eval's mean_stderr: sample std (n−1) / √n. For {1,0,1}: std = √(1/3), stderr = 1/3.
	if math.Abs(res.Acc.Stderr-1.0/3) > 1e-12 {
		t.Fatalf("acc stderr %v, want 1/3", res.Acc.Stderr)
	}
	if res.N != 3 || len(res.Samples) != 3 || *res.Samples[0].AccNorm != 0 {
		t.Fatalf("samples %+v", res.Samples)
	}
}

// LAMBADA: acc is "every continuation token greedy", perplexity exp(−mean ll).
func TestScoreLogLikelihood(t *testing.T) {
	task := &Task{Name: "ll", Version: "1.0", Kind: LogLikelihood}
	items := []Item{{Requests: []Request{{Context: "x", Continuation: " w1"}}}, {Requests: []Request{{Context: "y", Continuation: " w2"}}}}
	s := fakeScorer{ll: map[string]float64{" w1": -1, " w2": -3}, greedy: map[string]bool{" w1": true}}
	res, err := Score(task, items, items, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Acc.Value != 0.5 || math.Abs(res.Perplexity.Value-math.Exp(2)) > 1e-12 {
		t.Fatalf("acc %v perplexity %v, want 0.5 and e² = %v", res.Acc.Value, res.Perplexity.Value, math.Exp(2))
	}
	if !(res.Perplexity.Stderr > 0) {
		t.Fatalf("perplexity stderr %v", res.Perplexity.Stderr)
	}
}

// WinoGrande's partial scoring compares the same continuation after each option's context.
func TestWinograndePartialScoring(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "eval-llmfoundry"), 0o755)
	os.WriteFile(filepath.Join(dir, "eval-llmfoundry", "winogrande.jsonl"),
		[]byte(`{"context_options": ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"], "continuation": "was sad.", "gold": 1}`+"\n"), 0o644)
	task, _ := Lookup("winogrande")
	items, shots, err := task.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []Request{choice("Sarah beat Maria so Sarah", "was sad."), choice("Sarah beat Maria so Maria", "was sad.")}
	if len(items) != 1 || items[0].Requests[0] != want[0] || items[0].Requests[1] != want[1] {
		t.Fatalf("requests %+v, want %+v", items[0].Requests, want)
	}
	s := fakeScorer{ll: map[string]float64{want[0].Context + "|" + want[0].Continuation: -4, want[1].Context + "|" + want[1].Continuation: -2}}
	res, err := Score(task, items, shots, s, Options{})
	if err != nil || res.Acc.Value != 1 {
		t.Fatalf("acc %v, %v", res, err)
	}
}

// The prompts equal lm-eval's templates (testdata/lm_eval_templates.md quotes them).
func TestPromptsOnTheRealFiles(t *testing.T) {
	root := dmctest.AssetPath("")
	if _, err := os.Stat(filepath.Join(root, "eval-llmfoundry")); err != nil {
		t.Skipf("shared eval assets not found: %v", err)
	}
	for _, tc := range []struct {
		task       string
		n          int
		ctx, cont0 string
	}{
		{"piqa", 1838, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
			" Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish."},
		{"hellaswag", 10042, "Roof shingle removal: A man is sitting on a roof. he", " is using wrap to wrap a pair of skis."},
		{"arc_easy", 2376, "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
			" Sunlight is the source of energy for nearly all ecosystems."},
		{"arc_challenge", 1172, "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:",
			" Planetary density will decrease."},
		{"copa", 100, "The man turned on the faucet, therefore", "  the toilet filled with water."},
		{"openbookqa", 500, "A person wants to start saving money so that they can afford a nice vacation at the end of the year. After looking over their budget and expenses, they decide the best way to save money is to",
			" make more phone calls"},
		{"winogrande", 1267, "Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."},
		{"boolq", 3270, "", " no"},
		{"lambada_openai", 5153, "In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel.\n\n\"Figured if you're going to be out at night getting hit by cars, you might as well have some backup.\"\n\nI look at him, feeling stunned. Like this is some sort of sign. But as I stare at Harlin, his mouth curved in a confident grin, I don't care about", " signs"},
		{"siqa", 1954, "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do before this?\nA:", " make a new plan"},
		{"mmlu", 285, "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer:", " A"},
	} {
		task, err := Lookup(tc.task)
		if err != nil {
			t.Fatal(err)
		}
		items, shots, err := task.Load(root)
		if err != nil {
			t.Fatalf("%s: %v", tc.task, err)
		}
		if len(items) != tc.n {
			t.Errorf("%s: %d items, want %d", tc.task, len(items), tc.n)
		}
		it := items[0]
		if task.FewShot != nil {
			it = task.FewShot(shots, it, 0, nil)
		}
		if tc.ctx != "" && it.Requests[0].Context != tc.ctx {
			t.Errorf("%s: context\n%q\nwant\n%q", tc.task, it.Requests[0].Context, tc.ctx)
		}
		if tc.cont0 != "" && it.Requests[0].Continuation != tc.cont0 {
			t.Errorf("%s: first continuation %q, want %q", tc.task, it.Requests[0].Continuation, tc.cont0)
		}
		if tc.task == "boolq" {
			c := it.Requests[0].Context
			if strings.HasPrefix(c, "Passage: ") || !strings.Contains(c, "\nQuestion: ") || !strings.HasSuffix(c, "?\nAnswer:") {
				t.Errorf("boolq context is not \"{passage}\\nQuestion: {question}?\\nAnswer:\": %q", c)
			}
			if it.Requests[1].Continuation != " yes" {
				t.Errorf("boolq choices %q", it.Requests[1].Continuation)
			}
		}
	}
}

// MMLU's 5-shot prompt: the description, the subject's first five dev questions with answers.
func TestMMLUFiveShot(t *testing.T) {
	root := dmctest.AssetPath("")
	if _, err := os.Stat(filepath.Join(root, "mmlu", "dev")); err != nil {
		t.Skipf("shared MMLU dev split not found: %v", err)
	}
	task, _ := Lookup("mmlu")
	items, shots, err := task.Load(root)
	if err != nil {
		t.Fatal(err)
	}
	it := task.FewShot(shots, items[0], 5, nil)
	ctx := it.Requests[0].Context
	if !strings.HasPrefix(ctx, "The following are multiple choice questions (with answers) about abstract algebra.\n\nFind all c in Z_3") ||
		strings.Count(ctx, "\nAnswer:") != 6 || !strings.Contains(ctx, "D. 3\nAnswer: B\n\n") {
		t.Fatalf("5-shot context:\n%s", ctx)
	}
	if _, err := Score(task, items[:1], shots, fakeScorer{}, Options{NumFewShot: 6}); err == nil || !strings.Contains(err.Error(), "has 5 for it") {
		t.Fatalf("6 shots from a 5-question dev split: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	write := func(t *testing.T, rel, body string) string {
		dir := t.TempDir()
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(body), 0o644)
		return dir
	}
	for _, tc := range []struct {
		task, rel, body, want string
	}{
		{"arc_easy", "eval-llmfoundry/arc_easy.jsonl", `{"query": "Question: q", "choices": ["a", "b"], "gold": 0}` + "\n" + `{"query": "Question: q", "choices": ["a", "b"]}`, `arc_easy.jsonl:2: missing field "gold"`},
		{"copa", "eval-llmfoundry/copa.jsonl", `{"query": "q", "choices": ["a", "b"], "gold": 2}`, "copa.jsonl:1: label 2 is out of range for 2 choices"},
		{"boolq", "eval-llmfoundry/boolq.jsonl", `{"query": "q", "choices": ["a", "b"], "gold": 0`, "boolq.jsonl:1:"},
		{"hellaswag", "hellaswag/hellaswag_val_full.txt", "ctx\n7\na\nb\nc\nd\n", "hellaswag_val_full.txt:2: label \"7\" is not 0–3"},
		{"hellaswag", "hellaswag/hellaswag_val_full.txt", "ctx\n1\na\nb\n", "is not a whole number of 6-line items"},
		{"mmlu", "mmlu/dev/x_dev.csv", "q,a,b,c,d,E\n", "x_dev.csv:1: answer \"E\" is not A, B, C or D"},
		{"piqa", "piqa/valid.jsonl", `{"goal": "g", "sol1": "a", "sol2": "b"}`, "needs its labels file"},
		{"lambada_openai", "eval-llmfoundry/other.jsonl", "", "none of eval-llmfoundry/lambada_openai.jsonl"},
		{"siqa", "eval-llmfoundry/siqa.jsonl", `{"query": "Context: c\nQuestion: q\nChoices:\nA. x\nC. y\nAnswer:", "choices": ["A", "B"], "gold": 0}`, `does not start with "B. "`},
	} {
		task, err := Lookup(tc.task)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = task.Load(write(t, tc.rel, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %q: error %v, want one containing %q", tc.task, tc.body, err, tc.want)
		}
	}
	if _, err := Lookup("piqaa"); err == nil || !strings.Contains(err.Error(), "known tasks are") {
		t.Errorf("unknown task: %v", err)
	}
}

// concurrentFake is a fakeScorer that may run in parallel.
type concurrentFake struct{ fakeScorer }

func (concurrentFake) Concurrent() bool { return true }

// Parallel scoring gives exactly the serial results, item for item.
func TestScoreParallelEqualsSerial(t *testing.T) {
	task := &Task{Name: "p", Version: "1.0", Norm: true}
	ll := map[string]float64{}
	var items []Item
	for i := 0; i < 200; i++ {
		a, b := strings.Repeat("x", 1+i%7), strings.Repeat("y", 1+i%5)
		items = append(items, mc("q", i%2, a, b))
		ll[" "+a], ll[" "+b] = -float64(i%7)-1, -float64(i%5)-1.5
	}
	s := concurrentFake{fakeScorer{ll: ll}}
	one, err := Score(task, items, items, s, Options{Workers: 1, NumFewShot: 2, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	many, err := Score(task, items, items, s, Options{Workers: 8, NumFewShot: 2, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	if one.Acc != many.Acc || *one.AccNorm != *many.AccNorm {
		t.Fatalf("serial %+v %+v, parallel %+v %+v", one.Acc, *one.AccNorm, many.Acc, *many.AccNorm)
	}
	for i := range one.Samples {
		if one.Samples[i].Acc != many.Samples[i].Acc || one.Samples[i].LL[0] != many.Samples[i].LL[0] {
			t.Fatalf("item %d differs", i)
		}
	}
}

// The JSON has lm-eval's keys: results.<task>."acc,none" and "acc_stderr,none", n-shot,
// versions, n-samples, and the config it was given.
func TestReportShape(t *testing.T) {
	r := NewReport([]*Result{{Task: "piqa", Version: "1.0", N: 10, NShot: 0, Acc: Metric{0.6, 0.1}, AccNorm: &Metric{0.7, 0.2}},
		{Task: "lambada_openai", Version: "1.0", N: 5, Acc: Metric{0.2, 0.05}, Perplexity: &Metric{30, 3}}},
		map[string]int{"piqa": 1838}, map[string]any{"model": "m", "cache": "dmc", "real_cr": 4.2})
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	res := back["results"].(map[string]any)
	piqa := res["piqa"].(map[string]any)
	if piqa["acc,none"] != 0.6 || piqa["acc_stderr,none"] != 0.1 || piqa["acc_norm,none"] != 0.7 {
		t.Fatalf("piqa %v", piqa)
	}
	if res["lambada_openai"].(map[string]any)["perplexity,none"] != 30.0 {
		t.Fatalf("lambada %v", res["lambada_openai"])
	}
	ns := back["n-samples"].(map[string]any)["piqa"].(map[string]any)
	if ns["original"] != 1838.0 || ns["effective"] != 10.0 || back["config"].(map[string]any)["real_cr"] != 4.2 {
		t.Fatalf("n-samples %v config %v", ns, back["config"])
	}
	var md strings.Builder
	if err := WriteMarkdown(&md, []*Result{{Task: "piqa", Version: "1.0", Acc: Metric{0.6, 0.1}}}); err != nil ||
		!strings.Contains(md.String(), "| piqa | 1.0 | 0 | acc | 0.6000 | ± | 0.1000 |") {
		t.Fatalf("markdown %q, %v", md.String(), err)
	}
}

// runeTok encodes every rune as one token (ids from 10), BOS 1.
type runeTok struct{}

func (runeTok) Encode(text string, addBOS, addEOS bool) []int {
	var out []int
	for _, r := range text {
		out = append(out, 10+int(r)%100)
	}
	return out
}
func (runeTok) Decode([]int) string   { return "" }
func (runeTok) Piece(int, int) string { return "" }
func (runeTok) VocabSize() int        { return 110 }
func (runeTok) BOS() int              { return 1 }
func (runeTok) EOS() int              { return 2 }
func (runeTok) ID(string) (int, bool) { return 0, false }

// lpDecoder scores every next token −1 and records what it was asked.
type lpDecoder struct{ last []int }

func (d *lpDecoder) Prefill([][]int, bool) ([]int, []int, [][]float32, error) {
	return nil, nil, nil, nil
}
func (d *lpDecoder) Decode([]int, []int, bool) ([]int, [][]float32, error) { return nil, nil, nil }
func (d *lpDecoder) Release(...int) error                                  { return nil }
func (d *lpDecoder) LogProbs(tokens []int) ([]float64, error) {
	d.last = tokens
	out := make([]float64, len(tokens)-1)
	for i := range out {
		out[i] = -1
	}
	return out, nil
}

func TestDecoderScorerEncodingAndTruncation(t *testing.T) {
	// Trailing white space of the context moves to the continuation (lm-eval's _encode_pair).
	ctx, cont := EncodePair(runeTok{}, "ab ", "cd")
	if len(ctx) != 2 || len(cont) != 3 {
		t.Fatalf("context %v continuation %v; want 2 and 3 tokens (the space moved)", ctx, cont)
	}
	d := &lpDecoder{}
	s := DecoderScorer{Dec: d, Tok: runeTok{}, MaxLen: 8}
	ll, _, err := s.LogLikelihood(Request{Context: "abc", Continuation: "de"})
	if err != nil || ll != -2 || len(d.last) != 6 || d.last[0] != 1 {
		t.Fatalf("ll %v tokens %v, %v; want −2 over BOS+5 tokens", ll, d.last, err)
	}
	// Too long: the newest 8 tokens are kept; a continuation longer than the window is scored
	// on the 7 tokens that keep a prefix.
	ll, _, err = s.LogLikelihood(Request{Context: "abcdefgh", Continuation: "ijk"})
	if err != nil || ll != -3 || len(d.last) != 8 {
		t.Fatalf("truncated context: ll %v over %d tokens, %v", ll, len(d.last), err)
	}
	ll, _, err = s.LogLikelihood(Request{Context: "ab", Continuation: "cdefghijklmn"})
	if err != nil || ll != -7 || len(d.last) != 8 {
		t.Fatalf("continuation longer than the context: ll %v over %d tokens, %v", ll, len(d.last), err)
	}
}

// cancelScorer cancels its context after `after` scored requests.
type cancelScorer struct {
	fakeScorer
	after  int
	n      *int
	cancel func()
}

func (c cancelScorer) LogLikelihood(r Request) (float64, bool, error) {
	*c.n++
	if *c.n == c.after {
		c.cancel()
	}
	return c.fakeScorer.LogLikelihood(r)
}

// Ctrl-C stops scoring: no item starts after the context is cancelled, and Score says where
// it stopped.
func TestScoreStopsWhenCancelled(t *testing.T) {
	task := &Task{Name: "hand", Version: "1.0"}
	var items []Item
	for i := 0; i < 50; i++ {
		items = append(items, mc("q", 0, "a", "b"))
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	s := cancelScorer{fakeScorer: fakeScorer{ll: map[string]float64{" a": -1, " b": -2}}, after: 10, n: &n, cancel: cancel}
	_, err := Score(task, items, nil, s, Options{Workers: 1, Context: ctx})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "hand: stopped after 5 of 50 items") {
		t.Fatalf("cancelled scoring: %v", err)
	}
	if n != 10 {
		t.Fatalf("%d requests scored after the cancel at 10", n)
	}
	if _, err := Score(task, items, nil, s, Options{Context: ctx}); !errors.Is(err, context.Canceled) {
		t.Fatalf("an already cancelled context: %v", err)
	}
}
