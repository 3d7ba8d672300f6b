package checkpoints

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// The llama2.c model written as a Hugging Face directory computes the same logits, and reads
// back with the rotate-half layout HF uses.
func TestHFRoundTripStories260K(t *testing.T) {
	requireAsset(t, stories260K)
	w, err := ReadLlama2C(stories260K)
	if err != nil {
		t.Fatal(err)
	}
	tokens := []int{1, 403, 407, 261, 378, 429, 261, 308}
	want := forwardAll(t, w, tokens)
	for _, tc := range []struct {
		dtype string
		tol   float64
	}{{"f32", 1e-4}, {"bf16", 0.5}} {
		t.Run(tc.dtype, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "hf")
			extra := map[string]any{"dmc": map[string]any{"window": 12, "target_cr": 4.0}}
			if err := WriteHF(dir, w, tc.dtype, extra, 0); err != nil {
				t.Fatal(err)
			}
			back, err := LoadHF(dir)
			if err != nil {
				t.Fatal(err)
			}
			wantCfg := w.Config
			wantCfg.RoPE = model.RoPEHalf
			if back.Config != wantCfg {
				t.Fatalf("config %+v, want %+v", back.Config, wantCfg)
			}
			got := forwardAll(t, back, tokens)
			var maxDiff float64
			for i := range want {
				maxDiff = math.Max(maxDiff, math.Abs(float64(got[i]-want[i])))
			}
			t.Logf("%s: max |Δlogit| over %d tokens × %d = %.3g", tc.dtype, len(tokens), w.Config.VocabSize, maxDiff)
			if maxDiff > tc.tol {
				t.Fatalf("max logit difference %g > %g", maxDiff, tc.tol)
			}
			hc, err := ReadHFConfig(dir)
			if err != nil {
				t.Fatal(err)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, hc.Extra["dmc"]); err != nil || compact.String() != `{"target_cr":4,"window":12}` {
				t.Errorf("dmc block = %s", hc.Extra["dmc"])
			}
			if tc.dtype == "f32" {
				if text := greedyStory(t, back, len(goldenStory)); !strings.HasPrefix(text, goldenStory) {
					t.Errorf("greedy story from the HF copy: %q", text)
				}
			}
		})
	}
}

// The stored q/k rows follow transformers' convert_llama_weights_to_hf.py: within a head, HF
// row i is llama2.c row 2i and HF row D/2+i is llama2.c row 2i+1.
func TestHFQKRowOrderMatchesTransformers(t *testing.T) {
	cfg := tinyConfig(true)
	w := randomWeights(t, cfg, 11)
	dir := t.TempDir()
	if err := WriteHF(dir, w, "f32", nil, 0); err != nil {
		t.Fatal(err)
	}
	f, err := OpenSafetensors(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	D, cols := cfg.HeadDim(), cfg.Dim
	for _, tc := range []struct {
		name  string
		src   []float32
		heads int
	}{{"model.layers.1.self_attn.q_proj.weight", w.Layers[1].Wq, cfg.NHeads}, {"model.layers.1.self_attn.k_proj.weight", w.Layers[1].Wk, cfg.NKVHeads}} {
		hf, err := f.Float32(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		for h := 0; h < tc.heads; h++ {
			for i := 0; i < D/2; i++ {
				for j := 0; j < 2; j++ {
					hfRow, metaRow := h*D+j*D/2+i, h*D+2*i+j
					if !slices.Equal(hf[hfRow*cols:(hfRow+1)*cols], tc.src[metaRow*cols:(metaRow+1)*cols]) {
						t.Fatalf("%s: HF row %d is not llama2.c row %d", tc.name, hfRow, metaRow)
					}
				}
			}
		}
	}
	v, _ := f.Float32("model.layers.1.self_attn.v_proj.weight")
	if !slices.Equal(v, w.Layers[1].Wv) {
		t.Error("v_proj must not be permuted")
	}
}

func TestHFShardedRoundTrip(t *testing.T) {
	cfg := tinyConfig(false)
	w := randomWeights(t, cfg, 5)
	half, _ := WithRoPELayout(w, model.RoPEHalf)
	dir := t.TempDir()
	// Embedding and lm_head are 2 KiB each in f32: a 3 KiB limit forces several shards.
	if err := WriteHF(dir, w, "f32", nil, 3<<10); err != nil {
		t.Fatal(err)
	}
	if fileExists(filepath.Join(dir, hfSingleFile)) {
		t.Fatal("sharded export also wrote model.safetensors")
	}
	var idx hfIndex
	b, err := os.ReadFile(filepath.Join(dir, hfIndexFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	shards := map[string]bool{}
	for _, s := range idx.WeightMap {
		shards[s] = true
	}
	if len(shards) < 3 || len(idx.WeightMap) != len(half.Tensors()) {
		t.Fatalf("%d shards for %d tensors", len(shards), len(idx.WeightMap))
	}
	if total := idx.Metadata["total_size"].(float64); int64(total) != cfg.NumParams()*4 {
		t.Errorf("total_size %v, want %d", total, cfg.NumParams()*4)
	}
	for s := range shards {
		st, err := os.Stat(filepath.Join(dir, s))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 3<<10+2048 { // limit + header
			t.Errorf("shard %s is %d bytes", s, st.Size())
		}
	}
	back, err := LoadHF(dir)
	if err != nil {
		t.Fatal(err)
	}
	equalWeights(t, half, back)
	// Rewriting unsharded removes the old shards and the index.
	if err := WriteHF(dir, w, "bf16", nil, 0); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"config.json", "model.safetensors"}) {
		t.Errorf("directory after rewrite: %v", names)
	}
	if _, err := LoadHF(dir); err != nil {
		t.Fatal(err)
	}
}

// writeTinyHF writes a tiny HF directory and applies edit to its config.json.
func writeTinyHF(t *testing.T, tied bool, edit func(map[string]any)) (string, *model.Weights) {
	t.Helper()
	w := randomWeights(t, tinyConfig(tied), 9)
	dir := t.TempDir()
	if err := WriteHF(dir, w, "f32", nil, 0); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		editJSON(t, filepath.Join(dir, hfConfigFile), edit)
	}
	return dir, w
}

func editJSON(t *testing.T, path string, edit func(map[string]any)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadHFErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T) string
		want  string
	}{
		{"shape mismatch names the tensor", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, func(m map[string]any) { m["intermediate_size"] = 40 })
			return dir
		}, "tensor model.layers.0.mlp.gate_proj.weight in model.safetensors has shape [24 16], but config.json implies [40 16]"},
		{"untied without lm_head", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, func(m map[string]any) { m["tie_word_embeddings"] = false })
			return dir
		}, `missing 1 tensor(s): lm_head.weight (if the classifier shares the embedding, set "tie_word_embeddings": true`},
		{"more layers than stored", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, func(m map[string]any) { m["num_hidden_layers"] = 3 })
			return dir
		}, "missing 9 tensor(s): model.layers.2.input_layernorm.weight"},
		{"absurd layer count", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, func(m map[string]any) { m["num_hidden_layers"] = 1 << 40 })
			return dir
		}, "config says 1099511627776 layers but the checkpoint holds only 20 tensors"},
		{"unexpected tensor", func(t *testing.T) string {
			dir, w := writeTinyHF(t, true, nil)
			ts := append(w.Tensors(), model.Tensor[float32]{Name: "model.layers.0.self_attn.q_proj.bias", Shape: []int{16}, Data: make([]float32, 16)})
			if err := WriteSafetensors(filepath.Join(dir, hfSingleFile), ts, F32, nil); err != nil {
				t.Fatal(err)
			}
			return dir
		}, "a Llama model does not use: model.layers.0.self_attn.q_proj.bias"},
		{"no weights", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, nil)
			os.Remove(filepath.Join(dir, hfSingleFile))
			os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), []byte("x"), 0o644)
			return dir
		}, "PyTorch pickles are not read"},
		{"index escapes directory", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, nil)
			os.Remove(filepath.Join(dir, hfSingleFile))
			os.WriteFile(filepath.Join(dir, hfIndexFile), []byte(`{"weight_map":{"model.norm.weight":"../x.safetensors"}}`), 0o644)
			return dir
		}, "not a .safetensors file name in the same directory"},
		{"index names wrong shard", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, nil)
			os.Rename(filepath.Join(dir, hfSingleFile), filepath.Join(dir, "a.safetensors"))
			os.WriteFile(filepath.Join(dir, hfIndexFile), []byte(`{"weight_map":{"lm_head.weight":"a.safetensors"}}`), 0o644)
			return dir
		}, `says tensor "lm_head.weight" is in a.safetensors, but that shard does not contain it`},
		{"truncated shard", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, nil)
			p := filepath.Join(dir, hfSingleFile)
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-3)
			return dir
		}, "truncated"},
		{"rope scaling", func(t *testing.T) string {
			dir, _ := writeTinyHF(t, true, func(m map[string]any) { m["rope_scaling"] = map[string]any{"type": "linear", "factor": 2} })
			return dir
		}, "rope_scaling"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.setup(t)
			_, err := LoadHF(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestParseHFConfig(t *testing.T) {
	base := func() map[string]any {
		return map[string]any{"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama", "hidden_size": 4096,
			"intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 32000,
			"max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float16", "dmc": map[string]any{"window": 12}}
	}
	llama2 := model.Config{Dim: 4096, HiddenDim: 11008, NLayers: 32, NHeads: 32, NKVHeads: 32, VocabSize: 32000,
		MaxSeqLen: 4096, NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf}
	tests := []struct {
		name string
		edit func(m map[string]any)
		want model.Config
		err  string
	}{
		{"llama 2 7b defaults", func(map[string]any) {}, llama2, ""},
		{"gqa and theta", func(m map[string]any) {
			m["num_key_value_heads"] = 8
			m["rope_theta"] = 500000.0
			m["tie_word_embeddings"] = true
		},
			func() model.Config {
				c := llama2
				c.NKVHeads = 8
				c.RopeTheta = 500000
				c.TieEmbeddings = true
				return c
			}(), ""},
		{"eps default", func(m map[string]any) { delete(m, "rms_norm_eps") }, func() model.Config { c := llama2; c.NormEps = 1e-6; return c }(), ""},
		{"no model_type but Llama architecture", func(m map[string]any) { delete(m, "model_type") }, llama2, ""},
		{"explicit null rope_scaling", func(m map[string]any) { m["rope_scaling"] = nil }, llama2, ""},
		{"matching head_dim", func(m map[string]any) { m["head_dim"] = 128 }, llama2, ""},
		{"transformers 5 rope_parameters", func(m map[string]any) {
			m["rope_parameters"] = map[string]any{"rope_type": "default", "rope_theta": 250000.0}
		}, func() model.Config { c := llama2; c.RopeTheta = 250000; return c }(), ""},
		{"rope_parameters agreeing with rope_theta", func(m map[string]any) {
			m["rope_theta"] = 1e6
			m["rope_parameters"] = map[string]any{"rope_type": "default", "rope_theta": 1e6}
		}, func() model.Config { c := llama2; c.RopeTheta = 1e6; return c }(), ""},
		{"rope_parameters disagreeing", func(m map[string]any) {
			m["rope_theta"] = 1e4
			m["rope_parameters"] = map[string]any{"rope_type": "default", "rope_theta": 1e6}
		}, model.Config{}, "disagrees"},
		{"scaled rope_parameters", func(m map[string]any) {
			m["rope_parameters"] = map[string]any{"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
		}, model.Config{}, `only rope_type "default"`},
		{"default rope_parameters with factor", func(m map[string]any) {
			m["rope_parameters"] = map[string]any{"rope_type": "default", "rope_theta": 5e5, "factor": 8.0}
		}, model.Config{}, `field "factor" is not supported`},
		{"mistral", func(m map[string]any) { m["model_type"] = "mistral" }, model.Config{}, `model_type is "mistral"`},
		{"rope scaling", func(m map[string]any) { m["rope_scaling"] = map[string]any{"rope_type": "llama3"} }, model.Config{}, "rope_scaling"},
		{"gelu", func(m map[string]any) { m["hidden_act"] = "gelu" }, model.Config{}, `hidden_act "gelu"`},
		{"bias", func(m map[string]any) { m["attention_bias"] = true }, model.Config{}, "bias"},
		{"head_dim mismatch", func(m map[string]any) { m["head_dim"] = 64 }, model.Config{}, "head_dim 64"},
		{"heads not dividing", func(m map[string]any) { m["num_key_value_heads"] = 5 }, model.Config{}, "not a multiple of n_kv_heads 5"},
		{"missing size", func(m map[string]any) { delete(m, "hidden_size") }, model.Config{}, "dim must be positive"},
		{"string size", func(m map[string]any) { m["hidden_size"] = "big" }, model.Config{}, "hidden_size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			tc.edit(m)
			b, _ := json.Marshal(m)
			hc, err := ParseHFConfig(b)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if hc.Config != tc.want {
				t.Fatalf("config %+v, want %+v", hc.Config, tc.want)
			}
			if hc.TorchDType != "float16" || string(hc.Extra["dmc"]) != `{"window":12}` || len(hc.Extra) != 1 {
				t.Errorf("torch_dtype %q, extra %v", hc.TorchDType, hc.Extra)
			}
		})
	}
	if _, err := ParseHFConfig([]byte("[]")); err == nil {
		t.Error("non-object accepted")
	}
}

func TestWriteHFRejects(t *testing.T) {
	w := randomWeights(t, tinyConfig(true), 1)
	if err := WriteHF(t.TempDir(), w, "int8", nil, 0); err == nil || !strings.Contains(err.Error(), "use one of f32, f16, bf16") {
		t.Errorf("bad dtype: %v", err)
	}
	if err := WriteHF(t.TempDir(), w, "f32", map[string]any{"hidden_size": 1}, 0); err == nil || !strings.Contains(err.Error(), `"hidden_size" would override`) {
		t.Errorf("colliding extra key: %v", err)
	}
	bad := *w
	bad.Embed = bad.Embed[:3]
	if err := WriteHF(t.TempDir(), &bad, "f32", nil, 0); err == nil {
		t.Error("wrong-shaped weights accepted")
	}
}

// Loading allocates the weights once plus bounded conversion buffers: a checkpoint is never
// held twice (raw file contents and float32 weights) in memory.
func TestLoadHFAllocatesWeightsOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 13 MB checkpoint")
	}
	if raceEnabled {
		t.Skip("the race detector defeats sync.Pool, so allocations are not representative")
	}
	cfg := model.Config{Dim: 256, HiddenDim: 688, NLayers: 6, NHeads: 4, NKVHeads: 2, VocabSize: 4096, MaxSeqLen: 64,
		NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEHalf}
	w, err := model.RandomParams[float32](cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, tensor := range w.Tensors() { // make the weights exactly representable in bf16
		for i, v := range tensor.Data {
			tensor.Data[i] = BF16ToFloat32(Float32ToBF16(v))
		}
	}
	dir := t.TempDir()
	if err := WriteHF(dir, w, "bf16", nil, 4<<20); err != nil {
		t.Fatal(err)
	}
	weightBytes := uint64(cfg.NumParams() * 4)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	back, err := LoadHF(dir)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("weights %d bytes, LoadHF allocated %d bytes in total", weightBytes, allocated)
	// Conversion buffers: one per loading goroutine. Holding the 13 MB file would exceed this.
	if limit := weightBytes + uint64(min(runtime.GOMAXPROCS(0), 4)*readChunkBytes) + 2<<20; allocated > limit {
		t.Errorf("LoadHF allocated %d bytes for %d bytes of weights (limit %d)", allocated, weightBytes, limit)
	}
	equalWeights(t, w, back)
}
