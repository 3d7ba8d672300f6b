package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/retrofit"
	"gopkg.in/yaml.v3"
)

// Every numeric flag, --json destination, data path, --heldout and a tokenizer of another
// vocabulary are refused before any work starts, with a message naming the valid range or
// what to do, and no panic (issue 11).
func TestBadInputRefusedUpFront(t *testing.T) {
	dir := needAssets(t, "tinyllamas-stories260K")
	model := filepath.Join(dir, "stories260K.bin")
	tok := filepath.Join(dir, "tok512.bin")
	tmp := t.TempDir()
	corpus := filepath.Join(tmp, "c.txt")
	os.WriteFile(corpus, []byte("Once upon a time.<|endoftext|>The end."), 0o644)
	shards := filepath.Join(tmp, "shards")
	if _, e, c := run(t, "data", "prepare", "--tokenizer", tok, "--out", shards, "--heldout-frac", "0", corpus); c != 0 {
		t.Fatal(e)
	}
	out := filepath.Join(tmp, "run")
	rf := func(extra ...string) []string {
		return append([]string{"retrofit", "--model", model, "--data", shards, "--out", out, "--steps", "2"}, extra...)
	}
	gen := func(extra ...string) []string {
		return append([]string{"generate", "--model", model, "--tokenizer", tok}, extra...)
	}
	ev := func(extra ...string) []string {
		return append([]string{"eval", "--model", model, "--data", shards}, extra...)
	}
	prep := func(extra ...string) []string {
		return append(append([]string{"data", "prepare", "--tokenizer", tok, "--out", filepath.Join(tmp, "p")}, extra...), corpus)
	}
	bench := func(extra ...string) []string {
		return append([]string{"bench", "decode", "--model", "llama2-7b", "--random-weights"}, extra...)
	}
	exp := func(extra ...string) []string {
		return append([]string{"export", "--run", filepath.Join(tmp, "norun"), "--out", filepath.Join(tmp, "e")}, extra...)
	}
	readOnly := filepath.Join(tmp, "ro")
	os.Mkdir(readOnly, 0o555)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"generate temperature NaN", gen("--temperature", "NaN"), "--temperature must be a finite number ≥ 0"},
		{"generate temperature Inf", gen("--temperature", "Inf"), "--temperature must be a finite number ≥ 0"},
		{"generate temperature negative", gen("--temperature", "-0.5"), "--temperature must be a finite number ≥ 0"},
		{"generate top-p zero", gen("--top-p", "0"), "--top-p must be a finite number in (0, 1]"},
		{"generate top-p above 1", gen("--top-p", "1.5"), "--top-p must be a finite number in (0, 1]"},
		{"generate top-p NaN", gen("--top-p", "NaN"), "--top-p must be a finite number in (0, 1]"},
		{"generate max-tokens zero", gen("--max-tokens", "0"), "--max-tokens must be positive"},
		{"generate max-tokens negative", gen("--max-tokens", "-3"), "--max-tokens must be positive"},
		{"retrofit target-cr NaN", rf("--target-cr", "NaN"), "--target-cr must be ≥ 1"},
		{"retrofit target-cr Inf", rf("--target-cr", "Inf"), "--target-cr must be ≥ 1"},
		{"retrofit target-cr zero", rf("--target-cr", "0"), "--target-cr must be ≥ 1"},
		{"retrofit target-cr negative", rf("--target-cr", "-2"), "--target-cr must be ≥ 1"},
		{"retrofit target-cr below 1", rf("--target-cr", "0.5"), "--target-cr must be ≥ 1"},
		{"retrofit steps negative", rf("--steps", "-1"), "--steps must be ≥ 0"},
		{"retrofit stop-after negative", rf("--stop-after", "-1"), "--stop-after must be ≥ 0"},
		{"retrofit heldout-tokens negative", rf("--heldout-tokens", "-5"), "--heldout-tokens must be ≥ 0"},
		{"retrofit missing data", []string{"retrofit", "--model", model, "--data", filepath.Join(tmp, "nope"), "--out", out}, "--data " + filepath.Join(tmp, "nope") + " does not exist"},
		{"retrofit missing heldout", rf("--heldout", filepath.Join(tmp, "nope")), "--heldout"},
		{"retrofit heldout that is not data", rf("--heldout", readOnly), "--heldout"},
		{"retrofit 32000-token tokenizer for a 512-token model", rf("--tokenizer", filepath.Join(assets, "llama2-tokenizer/tokenizer.bin")), "has 32000 tokens but the model expects 512"},
		{"eval seq-len negative", ev("--seq-len", "-1"), "--seq-len must be 0 (the model's context) or ≥ 2"},
		{"eval seq-len 1", ev("--seq-len", "1"), "--seq-len must be 0 (the model's context) or ≥ 2"},
		{"eval max-tokens negative", ev("--max-tokens", "-1"), "--max-tokens must be ≥ 0"},
		{"eval json in a missing folder", ev("--json", filepath.Join(tmp, "missing", "r.json")), "does not exist: create it"},
		{"eval json is a folder", ev("--json", tmp), "is a directory"},
		{"eval json in a read-only folder", ev("--json", filepath.Join(readOnly, "r.json")), "cannot write in"},
		{"eval missing data", []string{"eval", "--model", model, "--data", filepath.Join(tmp, "nope")}, "does not exist"},
		{"eval text-field and text-column differ", ev("--text-field", "a", "--text-column", "b"), "give one"},
		{"export shard-mb zero", exp("--shard-mb", "0"), "--shard-mb must be > 0"},
		{"export shard-mb negative", exp("--shard-mb", "-5"), "--shard-mb must be > 0"},
		{"export unknown dtype", exp("--dtype", "int8"), "--dtype must be bf16, fp16 or fp32"},
		{"data prepare heldout-frac 1", prep("--heldout-frac", "1"), "--heldout-frac must be in [0, 1)"},
		{"data prepare heldout-frac negative", prep("--heldout-frac", "-0.1"), "--heldout-frac must be in [0, 1)"},
		{"data prepare heldout-frac NaN", prep("--heldout-frac", "NaN"), "--heldout-frac must be in [0, 1)"},
		{"data prepare split-by-bytes 0", prep("--split-by-bytes", "0"), "--split-by-bytes must be in (0, 1)"},
		{"data prepare split-by-bytes 1", prep("--split-by-bytes", "1"), "--split-by-bytes must be in (0, 1)"},
		{"data prepare split-by-bytes NaN", prep("--split-by-bytes", "NaN"), "--split-by-bytes must be in (0, 1)"},
		{"data prepare shard-size-mb 0", prep("--shard-size-mb", "0"), "--shard-size-mb must be ≥ 1"},
		{"data prepare missing input", []string{"data", "prepare", "--tokenizer", tok, "--out", filepath.Join(tmp, "p"), filepath.Join(tmp, "nope.txt")}, "does not exist"},
		{"bench prompt 0", bench("--prompt", "0"), "--prompt must be ≥ 1"},
		{"bench gen 2", bench("--gen", "2"), "--gen must be ≥ 3"},
		{"bench bandwidth NaN", bench("--bandwidth-gib", "NaN"), "--bandwidth-gib must be a finite number in (0, 1024]"},
		{"bench bandwidth 0", bench("--bandwidth-gib", "0"), "--bandwidth-gib must be a finite number in (0, 1024]"},
		{"retrofit unknown device", rf("--device", "tpu"), "unknown --device \"tpu\": use cpu or cuda"},
		{"retrofit unknown gemm", rf("--device", "cuda", "--gemm", "fp8"), "unknown --gemm \"fp8\": use bf16 or fp32"},
		{"retrofit gpus 0", rf("--gpus", "0"), "--gpus must be ≥ 1, got 0"},
		{"retrofit gpus on the cpu", rf("--gpus", "2"), "--gpus 2 needs --device cuda (one process per GPU)"},
		{"retrofit cuda without a CUDA build", rf("--device", "cuda"), "--device cuda: this dmc binary was built without CUDA support"},
		{"bench train on the cpu", []string{"bench", "train", "--model", "llama2-7b", "--random-weights", "--device", "cpu"}, "measures the GPU"},
		{"bench train seq 0", []string{"bench", "train", "--model", "llama2-7b", "--seq", "0"}, "--seq must be ≥ 1"},
		{"bench train unknown gemm", []string{"bench", "train", "--model", "llama2-7b", "--gemm", "fp16"}, "unknown --gemm"},
		{"bench json in a missing folder", bench("--json", filepath.Join(tmp, "missing", "b.json")), "does not exist: create it"},
		{"demo target-cr NaN", []string{"demo", "--out", filepath.Join(tmp, "demo"), "--target-cr", "NaN"}, "--target-cr must be a finite number ≥ 1"},
		{"demo retrofit-steps 0", []string{"demo", "--out", filepath.Join(tmp, "demo"), "--retrofit-steps", "0"}, "--retrofit-steps must be ≥ 1"},
		{"demo corpus-mb negative", []string{"demo", "--out", filepath.Join(tmp, "demo"), "--corpus-mb", "-1"}, "--corpus-mb must be a finite number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.name, "read-only") && os.Geteuid() == 0 {
				t.Skip("root writes into read-only folders")
			}
			_, stderr, code := run(t, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "panic") {
				t.Fatalf("exit %d, stderr %q; want an error mentioning %q", code, stderr, tc.want)
			}
			for _, d := range []string{out, filepath.Join(tmp, "demo"), filepath.Join(tmp, "p"), filepath.Join(tmp, "e")} {
				if _, err := os.Stat(d); err == nil {
					t.Fatalf("%s was created: work started before the bad input was refused", d)
				}
			}
		})
	}
}

// A corrupt newest checkpoint is recovered from in one command: --resume warns naming it,
// continues from the newest checkpoint that verifies, and ends with the weights of an
// uninterrupted run; latest never names the corrupt one.
func TestRetrofitResumePastCorruptCheckpoint(t *testing.T) {
	fx := newFixture(t)
	base := append([]string{"retrofit", "--model", fx.model, "--tokenizer", fx.tok, "--data", fx.shards, "--target-cr", "2", "--steps", "6",
		"--heldout-tokens", "200", "--set", "keep_checkpoints=3"}, tinyRecipe...)
	straight := filepath.Join(fx.dir, "straight")
	if _, e, c := run(t, append(base, "--out", straight)...); c != 0 {
		t.Fatal(e)
	}
	split := filepath.Join(fx.dir, "split")
	if _, e, c := run(t, append(base, "--out", split, "--stop-after", "4")...); c != 0 {
		t.Fatal(e)
	}
	w := filepath.Join(split, "checkpoints", "step-0000004", "weights.safetensors")
	b := mustRead(t, w)
	b[len(b)-3] ^= 0xff
	os.WriteFile(w, b, 0o644)
	_, stderr, code := run(t, "retrofit", "--out", split, "--resume")
	if code != 0 {
		t.Fatalf("resume past a corrupt checkpoint: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"checkpoint step-0000004 is corrupt", "using step-0000002", "resumed from step-0000002 (step 2)", "corrupt-step-0000004", "step 6/6"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("resume output lacks %q:\n%s", want, stderr)
		}
	}
	if l := strings.TrimSpace(string(mustRead(t, filepath.Join(split, "checkpoints", "latest")))); l != "step-0000006" {
		t.Errorf("latest names %s", l)
	}
	requireSameRunWeights(t, straight, split)
}

func requireSameRunWeights(t *testing.T, a, b string) {
	t.Helper()
	ma, err := retrofitLoad(a)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := retrofitLoad(b)
	if err != nil {
		t.Fatal(err)
	}
	at, bt := ma.Weights.Tensors(), mb.Weights.Tensors()
	for i := range at {
		for j := range at[i].Data {
			if at[i].Data[j] != bt[i].Data[j] {
				t.Fatalf("%s[%d]: %g in %s vs %g in %s", at[i].Name, j, at[i].Data[j], a, bt[i].Data[j], b)
			}
		}
	}
}

// --resume of a finished run says so (exit 0) and reuses its evaluation; a larger --steps
// extends the fine-tune stage (the earlier stages stay as trained), a smaller one is refused,
// and the new total is kept for later resumes.
func TestRetrofitResumeFinishedRunAndExtend(t *testing.T) {
	fx := newFixture(t)
	runDir := filepath.Join(fx.dir, "run")
	args := append([]string{"retrofit", "--model", fx.model, "--data", fx.shards, "--target-cr", "2", "--steps", "4", "--out", runDir, "--heldout-tokens", "200"}, tinyRecipe...)
	if _, e, c := run(t, args...); c != 0 {
		t.Fatal(e)
	}
	before := readRecipe(t, runDir)
	_, stderr, code := run(t, "retrofit", "--out", runDir, "--resume")
	if code != 0 || !strings.Contains(stderr, "is already finished at step 4; pass --steps M (> 4)") {
		t.Fatalf("resume of a finished run: exit %d\n%s", code, stderr)
	}
	if _, stderr, code = run(t, "retrofit", "--out", runDir, "--resume", "--steps", "3"); code == 0 || !strings.Contains(stderr, "can only extend it") {
		t.Fatalf("resume with fewer steps: exit %d\n%s", code, stderr)
	}
	_, stderr, code = run(t, "retrofit", "--out", runDir, "--resume", "--steps", "7")
	if code != 0 || !strings.Contains(stderr, "resumed from step-0000004 (step 4)") || !strings.Contains(stderr, "step 7/7") {
		t.Fatalf("resume with more steps: exit %d\n%s", code, stderr)
	}
	after := readRecipe(t, runDir)
	for _, k := range []string{"zero_out_steps", "retrofit_steps", "ramp_steps", "warmup_steps", "target_cr"} {
		if before[k] != after[k] {
			t.Errorf("%s changed from %v to %v: earlier stages must stay as trained", k, before[k], after[k])
		}
	}
	if after["fine_tune_steps"].(int) != before["fine_tune_steps"].(int)+3 {
		t.Errorf("fine_tune_steps %v → %v, want +3", before["fine_tune_steps"], after["fine_tune_steps"])
	}
	if _, stderr, code = run(t, "retrofit", "--out", runDir, "--resume"); code != 0 || !strings.Contains(stderr, "already finished at step 7") {
		t.Fatalf("resume after the extension: exit %d\n%s", code, stderr)
	}
}

func readRecipe(t *testing.T, dir string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(mustRead(t, filepath.Join(dir, "recipe.yaml")), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// --text-column (data prepare, eval) and --text-field (eval of .jsonl) name the text where the
// data package's messages suggest them.
func TestTextColumnAndFieldFlags(t *testing.T) {
	dir := needAssets(t, "tinyllamas-stories260K")
	hf := needAssets(t, "hf-arrow-examples/proxy_qa")
	model, tok := filepath.Join(dir, "stories260K.bin"), filepath.Join(dir, "tok512.bin")
	tmp := t.TempDir()
	if _, stderr, code := run(t, "data", "prepare", "--tokenizer", tok, "--out", filepath.Join(tmp, "a"), hf); code == 0 || !strings.Contains(stderr, "--text-column") {
		t.Fatalf("several string columns: exit %d, %q", code, stderr)
	}
	if out, stderr, code := run(t, "data", "prepare", "--tokenizer", tok, "--out", filepath.Join(tmp, "b"), "--text-column", "meta_question", hf); code != 0 || !strings.Contains(out, "prepared 100 documents") {
		t.Fatalf("--text-column: exit %d, %q %q", code, out, stderr)
	}
	if _, stderr, code := run(t, "eval", "--model", model, "--data", hf, "--max-tokens", "200"); code == 0 || !strings.Contains(stderr, "--text-column") {
		t.Fatalf("eval of HF text without --text-column: exit %d, %q", code, stderr)
	}
	if out, stderr, code := run(t, "eval", "--model", model, "--data", hf, "--text-column", "meta_question", "--max-tokens", "200"); code != 0 || !strings.Contains(out, "perplexity") {
		t.Fatalf("eval --text-column: exit %d, %q %q", code, out, stderr)
	}
	jl := filepath.Join(tmp, "c.jsonl")
	os.WriteFile(jl, []byte(`{"content":"Once upon a time there was a cat."}`+"\n"+`{"content":"The dog ran home."}`+"\n"), 0o644)
	if _, stderr, code := run(t, "eval", "--model", model, "--data", jl); code == 0 || !strings.Contains(stderr, "--text-field") {
		t.Fatalf("jsonl without --text-field: exit %d, %q", code, stderr)
	}
	if out, stderr, code := run(t, "eval", "--model", model, "--data", jl, "--text-field", "content"); code != 0 || !strings.Contains(out, "perplexity") {
		t.Fatalf("eval --text-field: exit %d, %q %q", code, out, stderr)
	}
}

func retrofitLoad(dir string) (*retrofit.Model, error) {
	return retrofit.LoadModel(dir, retrofit.LoadOptions{})
}
