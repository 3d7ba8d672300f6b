package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/bpe"
	"github.com/dmc-project/dmc/data/synth"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/retrofit"
	"gopkg.in/yaml.v3"
)

// fixture is a tiny model, tokenizer and prepared shards built from the synthetic corpus.
type fixture struct {
	dir, model, tok, shards string
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	dir := t.TempDir()
	var corpus bytes.Buffer
	if err := synth.Write(&corpus, 60_000, 5); err != nil {
		t.Fatal(err)
	}
	corpusPath := filepath.Join(dir, "corpus.txt")
	os.WriteFile(corpusPath, corpus.Bytes(), 0o644)
	pieces, err := bpe.Train(bytes.NewReader(corpus.Bytes()), 320, synth.Separator)
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	bpe.WriteLlama2C(&tb, pieces)
	tokPath := filepath.Join(dir, "tok.bin")
	os.WriteFile(tokPath, tb.Bytes(), 0o644)
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	shards := filepath.Join(dir, "shards")
	if _, err := data.Prepare(data.PrepareOptions{Inputs: []string{corpusPath}, Out: shards, Tokenizer: tok, TokenizerPath: tokPath, HeldoutFrac: 0.1, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	cfg := model.Config{Dim: 32, HiddenDim: 64, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 320, MaxSeqLen: 64,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf, TieEmbeddings: true}
	w, _ := model.RandomParams[float32](cfg, 3)
	modelDir := filepath.Join(dir, "base")
	if err := checkpoints.WriteHF(modelDir, w, "fp32", nil, 1<<40); err != nil {
		t.Fatal(err)
	}
	return fixture{dir, modelDir, tokPath, shards}
}

var tinyRecipe = []string{"--set", "seq_len=32", "--set", "batch_size=2", "--set", "checkpoint_every=2", "--set", "log_every=1"}

// A retrofit runs, evaluates, exports, and the export generates and evaluates with the DMC cache.
func TestRetrofitEvalExportGenerate(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	args := append([]string{"retrofit", "--model", fx.model, "--tokenizer", fx.tok, "--data", fx.shards, "--target-cr", "2", "--steps", "6", "--out", runDir}, tinyRecipe...)
	out, stderr, code := run(t, args...)
	if code != 0 {
		t.Fatalf("retrofit exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "held-out perplexity") || !strings.Contains(stderr, "step 6/6") {
		t.Fatalf("retrofit output: %s\n%s", out, stderr)
	}
	for _, f := range []string{"recipe.yaml", "model.json", "metrics.jsonl", "run.json", "heldout.json", "checkpoints/latest"} {
		if _, err := os.Stat(filepath.Join(runDir, f)); err != nil {
			t.Errorf("run dir lacks %s", f)
		}
	}
	jsonPath := filepath.Join(fx.dir, "eval.json")
	if _, stderr, code = run(t, "eval", "--model", runDir, "--data", fx.shards, "--json", jsonPath); code != 0 {
		t.Fatalf("eval exit %d: %s", code, stderr)
	}
	var rep map[string]any
	b, _ := os.ReadFile(jsonPath)
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ppl", "tokens", "cr", "cr_per_layer", "cr_per_head"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("eval JSON lacks %q", k)
		}
	}
	if rep["cache"] != "dmc" {
		t.Errorf("a DMC run was evaluated with the %v cache", rep["cache"])
	}
	if _, stderr, code = run(t, "eval", "--model", runDir, "--data", fx.shards, "--tasks", "channels"); code == 0 || !strings.Contains(stderr, "already a DMC model") {
		t.Errorf("channel ablation of a DMC run: exit %d, %q", code, stderr)
	}
	exp := filepath.Join(fx.dir, "export")
	if _, stderr, code = run(t, "export", "--run", runDir, "--out", exp, "--dtype", "fp32"); code != 0 {
		t.Fatalf("export exit %d: %s", code, stderr)
	}
	info, err := checkpoints.ReadDMCInfo(exp)
	if err != nil || info == nil || info.TargetCR != 2 || info.Window != 12 || len(info.AchievedByHead) != 2 {
		t.Fatalf("export dmc block: %+v, %v", info, err)
	}
	// The export's weights are the run's weights: the same held-out perplexity and CR as the
	// retrofit's own final evaluation.
	expJSON := filepath.Join(fx.dir, "eval-export.json")
	if _, stderr, code = run(t, "eval", "--model", exp, "--data", fx.shards, "--json", expJSON); code != 0 {
		t.Fatal(stderr)
	}
	var fromRun struct {
		PPL float64 `json:"ppl"`
		CR  float64 `json:"cr"`
	}
	var fromExport = fromRun
	if err := json.Unmarshal(mustRead(t, filepath.Join(runDir, "heldout.json")), &fromRun); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mustRead(t, expJSON), &fromExport); err != nil {
		t.Fatal(err)
	}
	if fromRun.PPL == 0 || math.Abs(fromRun.PPL-fromExport.PPL) > 1e-6*fromRun.PPL || fromRun.CR != fromExport.CR {
		t.Fatalf("run's held-out ppl %g CR %g, export's %g CR %g", fromRun.PPL, fromRun.CR, fromExport.PPL, fromExport.CR)
	}
	gen, stderr, code := run(t, "generate", "--model", exp, "--prompt", "Once upon a time", "--max-tokens", "10", "--temperature", "0")
	if code != 0 || !strings.HasPrefix(gen, "Once upon a time") || !strings.Contains(stderr, "DMC") {
		t.Fatalf("generate from export: exit %d, %q, %q", code, gen, stderr)
	}
}

// --tasks channels measures every head channel of a base model and recommends the cheapest; with
// ppl it also reports the base model's perplexity, which is the ablation's baseline.
func TestEvalChannels(t *testing.T) {
	fx := newFixture(t)
	jsonPath := filepath.Join(fx.dir, "channels.json")
	out, stderr, code := run(t, "eval", "--model", fx.model, "--data", fx.shards, "--tasks", "ppl,channels", "--max-tokens", "400", "--json", jsonPath)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var rep struct {
		PPL      float64 `json:"ppl"`
		Channels struct {
			BasePPL    float64 `json:"base_ppl"`
			PerChannel []struct {
				Channel int     `json:"channel"`
				PPL     float64 `json:"ppl"`
			} `json:"per_channel"`
			Recommended int `json:"recommended_channel"`
		} `json:"channels"`
	}
	if err := json.Unmarshal(mustRead(t, jsonPath), &rep); err != nil {
		t.Fatal(err)
	}
	c := rep.Channels
	if len(c.PerChannel) != 8 || rep.PPL == 0 || math.Abs(c.BasePPL-rep.PPL) > 1e-9*rep.PPL {
		t.Fatalf("channels report: %+v (ppl %g)", c, rep.PPL)
	}
	for _, pc := range c.PerChannel {
		if pc.PPL < c.PerChannel[c.Recommended].PPL {
			t.Errorf("channel %d (ppl %g) is cheaper than the recommended %d (%g)", pc.Channel, pc.PPL, c.Recommended, c.PerChannel[c.Recommended].PPL)
		}
	}
	if want := fmt.Sprintf("decision_channel=%d", c.Recommended); !strings.Contains(out, want) || !strings.Contains(out, "perplexity") {
		t.Errorf("output lacks %q or the perplexity table:\n%s", want, out)
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Interrupting and resuming gives the same final weights as one uninterrupted run.
func TestRetrofitStopAndResumeIsExact(t *testing.T) {
	fx := newFixture(t)
	base := append([]string{"retrofit", "--model", fx.model, "--tokenizer", fx.tok, "--data", fx.shards, "--target-cr", "2", "--steps", "6"}, tinyRecipe...)
	straight := filepath.Join(fx.dir, "straight")
	if _, e, c := run(t, append(base, "--out", straight)...); c != 0 {
		t.Fatal(e)
	}
	split := filepath.Join(fx.dir, "split")
	if _, e, c := run(t, append(base, "--out", split, "--stop-after", "3")...); c != 0 {
		t.Fatal(e)
	}
	if _, e, c := run(t, "retrofit", "--out", split, "--resume"); c != 0 {
		t.Fatal(e)
	}
	a, err := retrofit.LoadModel(straight, retrofit.LoadOptions{Warn: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	b, err := retrofit.LoadModel(split, retrofit.LoadOptions{Warn: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	at, bt := a.Weights.Tensors(), b.Weights.Tensors()
	for i := range at {
		for j := range at[i].Data {
			if at[i].Data[j] != bt[i].Data[j] {
				t.Fatalf("%s[%d]: %g uninterrupted vs %g resumed", at[i].Name, j, at[i].Data[j], bt[i].Data[j])
			}
		}
	}
}

func TestRetrofitBadInput(t *testing.T) {
	fx := newFixture(t)
	// Shards from a different tokenizer: ids beyond a smaller model's vocabulary.
	small := model.Config{Dim: 32, HiddenDim: 64, NLayers: 1, NHeads: 4, NKVHeads: 2, VocabSize: 100, MaxSeqLen: 64,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf, TieEmbeddings: true}
	w, _ := model.RandomParams[float32](small, 1)
	smallDir := filepath.Join(fx.dir, "small")
	checkpoints.WriteHF(smallDir, w, "fp32", nil, 1<<40)
	// A run whose only checkpoint is then corrupted.
	corruptRun := filepath.Join(fx.dir, "corrupt")
	args := append([]string{"retrofit", "--model", fx.model, "--tokenizer", fx.tok, "--data", fx.shards, "--steps", "2", "--out", corruptRun}, tinyRecipe...)
	if _, e, c := run(t, args...); c != 0 {
		t.Fatal(e)
	}
	matches, _ := filepath.Glob(filepath.Join(corruptRun, "checkpoints", "step-*", "weights.safetensors"))
	if len(matches) == 0 {
		t.Fatal("no checkpoint written")
	}
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		b[len(b)-3] ^= 0xff
		os.WriteFile(m, b, 0o644)
	}
	common := []string{"--tokenizer", fx.tok, "--data", fx.shards, "--steps", "2"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"target CR below 1", append([]string{"retrofit", "--model", fx.model, "--target-cr", "0.5", "--out", filepath.Join(fx.dir, "a")}, common...), "target-cr must be ≥ 1"},
		{"sequence longer than the model's", append(append([]string{"retrofit", "--model", fx.model, "--out", filepath.Join(fx.dir, "b")}, common...), "--set", "seq_len=128"), "exceeds the model's context"},
		{"shards from another tokenizer", append(append([]string{"retrofit", "--model", smallDir, "--out", filepath.Join(fx.dir, "c")}, common...), tinyRecipe...), "re-run dmc data prepare"},
		{"unknown preset without weights", append([]string{"retrofit", "--model", "llama2-7b", "--out", filepath.Join(fx.dir, "d")}, common...), "needs its weights"},
		{"corrupt checkpoint on resume", []string{"retrofit", "--out", corruptRun, "--resume"}, "is corrupt"},
		{"distillation weight above 1", append(append([]string{"retrofit", "--model", fx.model, "--out", filepath.Join(fx.dir, "f")}, common...), "--set", "distill_weight=2"), "distill_weight must be in [0, 1]"},
		{"unknown recipe field", append(append([]string{"retrofit", "--model", fx.model, "--out", filepath.Join(fx.dir, "e")}, common...), "--set", "lr_warp=3"), "lr_warp"},
		{"export of a non-run", []string{"export", "--run", fx.dir, "--out", filepath.Join(fx.dir, "x")}, "not a retrofit run"},
		{"eval with an unknown task", []string{"eval", "--model", fx.model, "--data", fx.shards, "--tasks", "mmlux"}, "unknown task \"mmlux\": known tasks are"},
		{"eval ppl without data", []string{"eval", "--model", fx.model, "--tasks", "ppl"}, "need --data"},
		{"eval h2o without a budget", []string{"eval", "--model", fx.model, "--data", fx.shards, "--cache", "h2o"}, "--cache h2o needs a size: --kv-budget N"},
		{"eval unknown cache", []string{"eval", "--model", fx.model, "--data", fx.shards, "--cache", "lru"}, "unknown --cache \"lru\""},
	}
	t.Setenv("HF_HUB_CACHE", filepath.Join(fx.dir, "empty-hub"))
	t.Setenv("DMC_WEIGHTS", "")
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "panic") {
				t.Fatalf("exit %d, stderr %q; want an error mentioning %q", code, stderr, tc.want)
			}
		})
	}
}

// With distill_weight, the original model is the teacher: the KL starts at 0 in a control run
// (the model is its teacher), grows once DMC changes the model, and is logged per step; a
// resumed run keeps the original, not the checkpoint, as its teacher (resume stays exact).
func TestRetrofitDistillation(t *testing.T) {
	fx := newFixture(t)
	readKD := func(dir string) []float64 {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, "metrics.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		var kd []float64
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var m struct {
				KD *float64 `json:"kd_loss"`
			}
			if err := json.Unmarshal([]byte(line), &m); err != nil || m.KD == nil {
				t.Fatalf("metrics line without kd_loss: %s", line)
			}
			kd = append(kd, *m.KD)
		}
		return kd
	}
	ctl := filepath.Join(fx.dir, "ctl")
	args := append([]string{"retrofit", "--model", fx.model, "--tokenizer", fx.tok, "--data", fx.shards, "--control", "--steps", "4",
		"--set", "distill_weight=1", "--out", ctl}, tinyRecipe...)
	if _, e, c := run(t, args...); c != 0 {
		t.Fatal(e)
	}
	if kd := readKD(ctl); len(kd) != 4 || kd[0] != 0 || kd[3] <= 0 {
		t.Errorf("control KL per step %v: want 0 at the first step (the model is its own teacher), > 0 after updates", kd)
	}
	full, split := filepath.Join(fx.dir, "full"), filepath.Join(fx.dir, "split")
	base := append([]string{"retrofit", "--model", fx.model, "--tokenizer", fx.tok, "--data", fx.shards, "--target-cr", "2", "--steps", "6",
		"--set", "distill_weight=0.5", "--set", "zero_out_steps=1"}, tinyRecipe...)
	if _, e, c := run(t, append(base, "--out", full)...); c != 0 {
		t.Fatal(e)
	}
	if _, e, c := run(t, append(base, "--out", split, "--stop-after", "3")...); c != 0 {
		t.Fatal(e)
	}
	if _, e, c := run(t, "retrofit", "--out", split, "--resume"); c != 0 {
		t.Fatal(e)
	}
	a, b := readKD(full), readKD(split)
	if len(a) != 6 || len(b) != 6 {
		t.Fatalf("steps logged: %d and %d, want 6", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("step %d: KL %v uninterrupted vs %v resumed", i+1, a[i], b[i])
		}
	}
	if a[5] <= 0 {
		t.Errorf("KL after DMC training is %v, want > 0", a[5])
	}
}

// A second retrofit on a run directory that another process is training in is refused with
// the holder's PID, and leaves the directory's files as they were.
func TestRetrofitRunDirLock(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	args := append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--steps", "4", "--out", runDir}, tinyRecipe...)
	if _, e, c := run(t, append(args, "--stop-after", "2")...); c != 0 {
		t.Fatal(e)
	}
	before, _ := os.ReadFile(filepath.Join(runDir, "metrics.jsonl"))
	// Hold the lock as a running retrofit does (flock on RUN/.lock, PID inside).
	f, err := os.OpenFile(filepath.Join(runDir, retrofit.LockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	f.Truncate(0)
	f.WriteAt([]byte("4242\n"), 0)
	_, stderr, code := run(t, "retrofit", "--out", runDir, "--resume")
	if code == 0 || !strings.Contains(stderr, "process 4242") || strings.Contains(stderr, "panic") {
		t.Fatalf("exit %d, stderr %q: want a refusal naming PID 4242", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(runDir, "metrics.jsonl")); !bytes.Equal(before, after) {
		t.Fatal("the refused run changed metrics.jsonl")
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if _, e, c := run(t, "retrofit", "--out", runDir, "--resume"); c != 0 {
		t.Fatalf("resume after the lock was released: %s", e)
	}
}

// run.json stores absolute paths: a run started with relative paths resumes, evaluates and
// exports from another working directory.
func TestRetrofitResumeFromAnotherDirectory(t *testing.T) {
	fx := newFixture(t)
	t.Chdir(fx.dir)
	args := append([]string{"retrofit", "--model", "base", "--tokenizer", "tok.bin", "--data", "shards", "--steps", "4", "--out", "run", "--stop-after", "2"}, tinyRecipe...)
	if _, e, c := run(t, args...); c != 0 {
		t.Fatal(e)
	}
	elsewhere := t.TempDir()
	t.Chdir(elsewhere)
	runDir := filepath.Join(fx.dir, "run")
	if _, e, c := run(t, "retrofit", "--out", runDir, "--resume"); c != 0 {
		t.Fatalf("resume from another directory: %s", e)
	}
	if _, e, c := run(t, "export", "--run", runDir, "--out", "exp"); c != 0 {
		t.Fatalf("export from another directory: %s", e)
	}
	if _, e, c := run(t, "eval", "--model", runDir, "--data", filepath.Join(fx.dir, "shards"), "--max-tokens", "200"); c != 0 {
		t.Fatalf("eval from another directory: %s", e)
	}
}

// SIGINT during a retrofit saves a checkpoint and exits 130 with one message saying how to
// continue.
func TestRetrofitInterruptExitCode(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	args := append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--steps", "100000", "--out", runDir}, tinyRecipe...)
	done := make(chan struct{})
	var stderr string
	var code int
	go func() {
		defer close(done)
		_, stderr, code = run(t, args...)
	}()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(filepath.Join(runDir, "metrics.jsonl")); bytes.Count(b, []byte("\n")) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the run did not start")
		}
	}
	syscall.Kill(os.Getpid(), syscall.SIGINT)
	<-done
	if code != 130 || strings.Count(stderr, "interrupted: saved") != 1 || !strings.Contains(stderr, "--resume") {
		t.Fatalf("exit %d, stderr %q: want 130 and one message with --resume", code, stderr)
	}
}

// export refuses to overwrite another run's export (or any other folder) without --force,
// and re-exporting the same run into its export works.
func TestExportRefusesAnotherRunsExport(t *testing.T) {
	fx := newFixture(t)
	runA, runB, exp := filepath.Join(fx.dir, "a"), filepath.Join(fx.dir, "b"), filepath.Join(fx.dir, "exp")
	for _, r := range []string{runA, runB} {
		if _, e, c := run(t, append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--steps", "2", "--out", r, "--control"}, tinyRecipe...)...); c != 0 {
			t.Fatal(e)
		}
	}
	if _, e, c := run(t, "export", "--run", runA, "--out", exp); c != 0 {
		t.Fatal(e)
	}
	if _, e, c := run(t, "export", "--run", runA, "--out", exp); c != 0 {
		t.Fatalf("re-export of the same run: %s", e)
	}
	before, _ := os.ReadFile(filepath.Join(exp, "model.safetensors"))
	_, stderr, code := run(t, "export", "--run", runB, "--out", exp)
	if code == 0 || !strings.Contains(stderr, "another run") || !strings.Contains(stderr, "--force") {
		t.Fatalf("exit %d, stderr %q: want a refusal", code, stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(exp, "model.safetensors")); !bytes.Equal(before, after) {
		t.Fatal("the refused export changed the weights")
	}
	if _, e, c := run(t, "export", "--run", runB, "--out", exp, "--force"); c != 0 {
		t.Fatalf("--force: %s", e)
	}
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644)
	if _, stderr, code := run(t, "export", "--run", runA, "--out", other); code == 0 || !strings.Contains(stderr, "not an export") {
		t.Fatalf("export into a user folder: exit %d, %q", code, stderr)
	}
}

// The default recipe chooses the decision channel (the cheapest to remove, measured on the
// training data) and the decision offset (from the target CR) by itself; a recipe value given
// with --set is kept as given.
func TestRetrofitAutoChannelAndOffset(t *testing.T) {
	fx := newFixture(t)
	read := func(dir string) (ch int, off float64) {
		b, err := os.ReadFile(filepath.Join(dir, "recipe.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Ch  int     `yaml:"decision_channel"`
			Off float64 `yaml:"decision_offset"`
		}
		if err := yaml.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r.Ch, r.Off
	}
	auto := filepath.Join(fx.dir, "auto")
	_, stderr, code := run(t, append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--target-cr", "2", "--steps", "2", "--out", auto}, tinyRecipe...)...)
	if code != 0 {
		t.Fatal(stderr)
	}
	w, _, err := checkpoints.Load(fx.model)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := data.OpenWith(fx.shards, data.OpenOptions{Split: "train"})
	if err != nil {
		t.Fatal(err)
	}
	want, err := eval.ChannelAblation(context.Background(), w, ds.Documents, eval.PPLOptions{MaxTokens: 4096}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ch, off := read(auto); ch != want.Recommended || off != dmc.AutoDecisionOffset(2) {
		t.Errorf("auto: channel %d offset %g, want channel %d (the ablation's cheapest) and offset %g", ch, off, want.Recommended, dmc.AutoDecisionOffset(2))
	}
	if !strings.Contains(stderr, "auto_channel") || !strings.Contains(stderr, "auto_offset") {
		t.Errorf("the automatic choices are not reported: %q", stderr)
	}
	given := filepath.Join(fx.dir, "given")
	if _, e, c := run(t, append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--target-cr", "2", "--steps", "2", "--out", given,
		"--set", "decision_channel=2", "--set", "decision_offset=3.5"}, tinyRecipe...)...); c != 0 {
		t.Fatal(e)
	}
	if ch, off := read(given); ch != 2 || off != 3.5 {
		t.Errorf("given: channel %d offset %g, want 2 and 3.5", ch, off)
	}
	// Resume keeps the run's own choices (the recipe must match the checkpoint's).
	if _, e, c := run(t, "retrofit", "--out", auto, "--resume"); c != 0 {
		t.Fatalf("resume of an auto run: %s", e)
	}
}

// --heldout-tokens limits the final evaluation; resuming a finished run says so and reuses the
// evaluation instead of running it again; a bad --heldout is refused before training.
func TestRetrofitHeldoutAndFinishedResume(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	args := append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--steps", "2", "--out", runDir, "--heldout-tokens", "300"}, tinyRecipe...)
	out, e, c := run(t, args...)
	if c != 0 {
		t.Fatal(e)
	}
	b, _ := os.ReadFile(filepath.Join(runDir, "heldout.json"))
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if tok := got["tokens"].(float64); tok < 300 || tok > 300+64 {
		t.Errorf("held-out tokens %v, want about 300", tok)
	}
	if got["step"].(float64) != 2 || got["max_tokens"].(float64) != 300 {
		t.Errorf("heldout.json does not record the step and limit: %s", b)
	}
	before, _ := os.Stat(filepath.Join(runDir, "heldout.json"))
	out2, stderr, code := run(t, "retrofit", "--out", runDir, "--resume")
	if code != 0 || !strings.Contains(stderr, "already finished") {
		t.Fatalf("resume of a finished run: exit %d, %q", code, stderr)
	}
	if after, _ := os.Stat(filepath.Join(runDir, "heldout.json")); !after.ModTime().Equal(before.ModTime()) {
		t.Error("the finished run's evaluation ran again")
	}
	if out2 != out {
		t.Errorf("resume reports %q, the run reported %q", out2, out)
	}
	_, stderr, code = run(t, append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--steps", "2", "--out", filepath.Join(fx.dir, "r2"),
		"--heldout", filepath.Join(fx.dir, "missing")}, tinyRecipe...)...)
	if code == 0 || !strings.Contains(stderr, "--heldout") {
		t.Fatalf("missing --heldout: exit %d, %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(fx.dir, "r2", "metrics.jsonl")); err == nil {
		t.Error("training started before the bad --heldout was refused")
	}
}

// eval_every scores the held-out split with hard decisions during training (metrics.jsonl's
// eval_lm_loss, a progress line), and is refused when there is no held-out data.
func TestRetrofitEvalEvery(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	_, stderr, code := run(t, append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--target-cr", "2", "--steps", "4", "--out", runDir,
		"--heldout-tokens", "100", "--set", "eval_every=2", "--set", "eval_batches=1"}, tinyRecipe...)...)
	if code != 0 {
		t.Fatal(stderr)
	}
	if !strings.Contains(stderr, "eval at step 2") {
		t.Errorf("no evaluation progress line in %q", stderr)
	}
	b, _ := os.ReadFile(filepath.Join(runDir, "metrics.jsonl"))
	var evals []int
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var m struct {
			Step   int      `json:"step"`
			EvalLM *float64 `json:"eval_lm_loss"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		if m.EvalLM != nil {
			evals = append(evals, m.Step)
		}
	}
	if !slices.Equal(evals, []int{2, 4}) {
		t.Errorf("held-out evaluations at steps %v, want [2 4]", evals)
	}
	// Shards without a held-out split and no --heldout: refused before training.
	tok, err := tokenizer.Load(fx.tok)
	if err != nil {
		t.Fatal(err)
	}
	flat := filepath.Join(fx.dir, "flat")
	if _, err := data.Prepare(data.PrepareOptions{Inputs: []string{filepath.Join(fx.dir, "corpus.txt")}, Out: flat, Tokenizer: tok, TokenizerPath: fx.tok}); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = run(t, append([]string{"retrofit", "--model", fx.model, "--data", flat, "--steps", "2", "--out", filepath.Join(fx.dir, "r2"),
		"--set", "eval_every=1"}, tinyRecipe...)...)
	if code == 0 || !strings.Contains(stderr, "eval_every 1 needs held-out data") {
		t.Fatalf("eval_every without held-out data: exit %d, %q", code, stderr)
	}
}

// --init random pre-trains a YAML model config from scratch (a control run), and refuses what
// makes no sense with random weights.
func TestRetrofitInitRandom(t *testing.T) {
	fx := newFixture(t)
	cfgPath := filepath.Join(fx.dir, "tiny.yaml")
	os.WriteFile(cfgPath, []byte("name: tiny\ndim: 32\nhidden_dim: 64\nn_layers: 2\nn_heads: 4\nn_kv_heads: 2\nvocab_size: 320\nmax_seq_len: 64\nnorm_eps: 1.0e-5\nrope_theta: 10000\nrope_layout: half\ntie_embeddings: true\n"), 0o644)
	runDir := filepath.Join(fx.dir, "pretrain")
	args := append([]string{"retrofit", "--model", cfgPath, "--init", "random", "--control", "--config", "demo-pretrain", "--tokenizer", fx.tok, "--data", fx.shards,
		"--steps", "4", "--out", runDir}, tinyRecipe...)
	_, stderr, code := run(t, args...)
	if code != 0 {
		t.Fatalf("pre-training exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "random initialisation") || !strings.Contains(stderr, "step 4/4") {
		t.Fatalf("pre-training output: %s", stderr)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--init", "zeros"}, "use weights"},
		{[]string{"--init", "random", "--weights", fx.model}, "drop --weights"},
		{[]string{"--init", "random", "--set", "distill_weight=1"}, "distill_weight=0"},
		{[]string{"--init", "random", "--model", "no-such-preset"}, "not a preset"},
	} {
		a := append([]string{"retrofit", "--model", cfgPath, "--tokenizer", fx.tok, "--data", fx.shards, "--steps", "2", "--out", filepath.Join(fx.dir, "bad")}, tinyRecipe...)
		a = append(a, c.args...)
		if _, stderr, code := run(t, a...); code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want an error containing %q", c.args, code, stderr, c.want)
		}
	}
}

// Held-out text with any file name (WikiText's wiki.valid.tokens) is recognised by content and
// tokenised with the model's tokenizer.
func TestEvalTextFileByContent(t *testing.T) {
	fx := newFixture(t)
	b, err := os.ReadFile(filepath.Join(fx.dir, "corpus.txt"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(fx.dir, "wiki.valid.tokens")
	os.WriteFile(p, b[:min(len(b), 20000)], 0o644)
	out, stderr, code := run(t, "eval", "--model", fx.model, "--tokenizer", fx.tok, "--data", p, "--max-tokens", "500")
	if code != 0 || !strings.Contains(out+stderr, "perplexity") {
		t.Fatalf("eval of a .tokens text file: exit %d\n%s\n%s", code, out, stderr)
	}
}

// --random-weights eval is for GPU scoring-speed runs; elsewhere it says what it needs.
func TestEvalRandomWeightsRefusals(t *testing.T) {
	fx := newFixture(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--model", "llama2-7b", "--random-weights", "--tasks", "piqa"}, "--device cuda"},
		{[]string{"--model", "llama2-7b", "--random-weights", "--device", "cuda", "--tasks", "ppl"}, "benchmark --tasks only"},
		{[]string{"--model", "llama2-7b", "--random-weights", "--device", "cuda", "--tasks", "piqa"}, "needs --tokenizer"},
		{[]string{"--model", fx.model, "--tokenizer", fx.tok, "--force-cr", "4", "--tasks", "piqa"}, "--random-weights benchmarks only"},
	} {
		if _, stderr, code := run(t, append([]string{"eval"}, c.args...)...); code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want %q", c.args, code, stderr, c.want)
		}
	}
}

// dmc eval of a run whose latest checkpoint does not verify says so and names the one it used.
func TestEvalWarnsAboutACorruptLatestCheckpoint(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	if _, e, c := run(t, append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--steps", "4", "--out", runDir, "--heldout-tokens", "50"}, tinyRecipe...)...); c != 0 {
		t.Fatal(e)
	}
	recipe := filepath.Join(runDir, "checkpoints", "step-0000004", "recipe.yaml")
	b, err := os.ReadFile(recipe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(recipe, append(b, []byte("# edited\n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(t, "eval", "--model", runDir, "--data", fx.shards, "--max-tokens", "50")
	if code != 0 {
		t.Fatal(stderr)
	}
	if !strings.Contains(stderr, "step-0000004 is corrupt") || !strings.Contains(stderr, "using step-0000002") {
		t.Errorf("no warning about the corrupt checkpoint in %q", stderr)
	}
}

// export --calibrate-cr moves the decision offset to where the run's held-out data compresses
// by the target, keeps the trained offset, and the export then evaluates at that CR; without
// held-out data it says what to pass.
func TestExportCalibrateCR(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	if _, e, c := run(t, append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--target-cr", "2", "--steps", "4", "--out", runDir,
		"--heldout-tokens", "50"}, tinyRecipe...)...); c != 0 {
		t.Fatal(e)
	}
	exp := filepath.Join(fx.dir, "export")
	_, stderr, code := run(t, "export", "--run", runDir, "--out", exp, "--calibrate-cr", "--calibrate-tokens", "600")
	if code != 0 {
		t.Fatal(stderr)
	}
	if !strings.Contains(stderr, "calibrating the decision offset") {
		t.Errorf("no calibration progress in %q", stderr)
	}
	b, _ := os.ReadFile(filepath.Join(exp, "config.json"))
	var cfg struct {
		DMC struct {
			Offset   float64  `json:"decision_offset"`
			Trained  *float64 `json:"trained_decision_offset"`
			Achieved float64  `json:"achieved_cr"`
		} `json:"dmc"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.DMC.Trained == nil || math.Abs(cfg.DMC.Achieved/2-1) > 0.05 {
		t.Fatalf("dmc block after calibration: %s", b)
	}
	out, stderr, code := run(t, "eval", "--model", exp, "--data", fx.shards, "--max-tokens", "600")
	if code != 0 {
		t.Fatal(stderr)
	}
	if !strings.Contains(out, "compression rate") {
		t.Fatalf("eval output %q", out)
	}
	var cr float64
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "compression rate") {
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "compression rate")), "%fx", &cr)
		}
	}
	if math.Abs(cr/cfg.DMC.Achieved-1) > 0.01 { // the export is bf16, the calibration ran on the fp32 checkpoint
		t.Errorf("the export evaluates at CR %g, the calibration measured %g", cr, cfg.DMC.Achieved)
	}
	// --decision-offset evaluates the export at another offset: the trained one gives the
	// run's own compression, a much higher one no merges.
	crAt := func(off string) float64 {
		out, stderr, code := run(t, "eval", "--model", exp, "--data", fx.shards, "--max-tokens", "600", "--decision-offset", off)
		if code != 0 {
			t.Fatal(stderr)
		}
		var c float64
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "compression rate") {
				fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "compression rate")), "%fx", &c)
			}
		}
		return c
	}
	if c := crAt("100"); c != 1 {
		t.Errorf("--decision-offset 100: CR %g, want 1 (no merges)", c)
	}
	if c := crAt(fmt.Sprint(cfg.DMC.Offset)); math.Abs(c/cr-1) > 1e-9 {
		t.Errorf("--decision-offset at the export's own offset: CR %g, want %g", c, cr)
	}
	if _, stderr, code := run(t, "eval", "--model", fx.model, "--data", fx.shards, "--decision-offset", "1"); code == 0 || !strings.Contains(stderr, "not a DMC model") {
		t.Errorf("--decision-offset on a vanilla model: exit %d, %q", code, stderr)
	}
	// No held-out data in the run and no --measure.
	tok, _ := tokenizer.Load(fx.tok)
	flat := filepath.Join(fx.dir, "flat")
	if _, err := data.Prepare(data.PrepareOptions{Inputs: []string{filepath.Join(fx.dir, "corpus.txt")}, Out: flat, Tokenizer: tok, TokenizerPath: fx.tok}); err != nil {
		t.Fatal(err)
	}
	run2 := filepath.Join(fx.dir, "run2")
	if _, e, c := run(t, append([]string{"retrofit", "--model", fx.model, "--data", flat, "--target-cr", "2", "--steps", "2", "--out", run2}, tinyRecipe...)...); c != 0 {
		t.Fatal(e)
	}
	_, stderr, code = run(t, "export", "--run", run2, "--out", filepath.Join(fx.dir, "e2"), "--calibrate-cr")
	if code == 0 || !strings.Contains(stderr, "pass --measure DATA") {
		t.Fatalf("calibration without held-out data: exit %d, %q", code, stderr)
	}
}
