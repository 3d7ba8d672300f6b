package checkpoints

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// The testdata directories were written by transformers 5.17.0 / torch 2.11 / safetensors 0.8
// (testdata/README.md has the script); logits.json holds PyTorch's float32 logits for them.
func TestLoadTransformersFixtures(t *testing.T) {
	tests := []struct {
		dir     string
		want    model.Config
		sharded bool
	}{
		{"tiny-llama-f32", model.Config{Dim: 32, HiddenDim: 48, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 64, MaxSeqLen: 32,
			NormEps: 1e-5, RopeTheta: 500000, RoPE: model.RoPEHalf}, true},
		{"tiny-llama-bf16", model.Config{Dim: 32, HiddenDim: 48, NLayers: 2, NHeads: 4, NKVHeads: 2, VocabSize: 64, MaxSeqLen: 32,
			NormEps: 1e-5, RopeTheta: 500000, RoPE: model.RoPEHalf}, true},
		{"tiny-llama-tied-f16", model.Config{Dim: 16, HiddenDim: 24, NLayers: 1, NHeads: 2, NKVHeads: 2, VocabSize: 32, MaxSeqLen: 16,
			NormEps: 1e-6, RopeTheta: 10000, RoPE: model.RoPEHalf, TieEmbeddings: true}, false},
	}
	for _, tc := range tests {
		t.Run(tc.dir, func(t *testing.T) {
			dir := filepath.Join("testdata", tc.dir)
			w, from, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if from != dir || w.Config != tc.want {
				t.Fatalf("Load = %+v from %s, want %+v", w.Config, from, tc.want)
			}
			if fileExists(filepath.Join(dir, hfIndexFile)) != tc.sharded {
				t.Fatalf("fixture sharding is not as expected")
			}
			var ref struct {
				Tokens []int
				Logits []float64
			}
			b, err := os.ReadFile(filepath.Join(dir, "logits.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &ref); err != nil {
				t.Fatal(err)
			}
			got := forwardAll(t, w, ref.Tokens)
			var maxDiff float64
			for i := range got {
				maxDiff = math.Max(maxDiff, math.Abs(float64(got[i])-ref.Logits[i]))
			}
			t.Logf("max |Go - PyTorch| logit = %.3g", maxDiff)
			if maxDiff > 1e-4 {
				t.Fatalf("logits differ from transformers by %g", maxDiff)
			}
			// Converting to the llama2.c layout and writing back as HF keeps the model.
			inter, err := WithRoPELayout(w, model.RoPEInterleaved)
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			if err := WriteHF(out, inter, "f32", nil, 0); err != nil {
				t.Fatal(err)
			}
			back, err := LoadHF(out)
			if err != nil {
				t.Fatal(err)
			}
			equalWeights(t, w, back)
		})
	}
}

// special.safetensors was written by the reference safetensors library from PyTorch tensors:
// its F16/BF16 data are PyTorch's own conversions of the F32 values, so this checks our reader
// and our rounding (ties, subnormals, overflow, NaN) against PyTorch bit for bit.
func TestSafetensorsFromReferenceLibrary(t *testing.T) {
	f, err := OpenSafetensors(filepath.Join("testdata", "special.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := os.ReadFile(filepath.Join("testdata", "special.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if f.Metadata()["format"] != "pt" {
		t.Errorf("metadata %v", f.Metadata())
	}
	parse := func(key string) []float32 {
		var out []float32
		for _, s := range want[key].([]any) {
			v, err := strconv.ParseFloat(s.(string), 64)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, float32(v))
		}
		return out
	}
	src := parse("f32")
	for _, dt := range []string{"f32", "f16", "bf16"} {
		info, _ := f.Info(dt)
		got, err := f.Float32(dt)
		if err != nil {
			t.Fatal(err)
		}
		exp := parse(dt)
		for i := range exp {
			if !sameBits(got[i], exp[i]) {
				t.Errorf("%s[%d]: read %g, PyTorch has %g", dt, i, got[i], exp[i])
			}
			var ours float32
			switch info.DType {
			case F32:
				ours = src[i]
			case F16:
				ours = F16ToFloat32(Float32ToF16(src[i]))
			case BF16:
				ours = BF16ToFloat32(Float32ToBF16(src[i]))
			}
			if !sameBits(ours, exp[i]) {
				t.Errorf("%s: we round %g to %g, PyTorch to %g", info.DType, src[i], ours, exp[i])
			}
		}
	}
	m, err := f.Float32("m")
	if info, _ := f.Info("m"); err != nil || len(info.Shape) != 2 || info.Shape[0] != 2 || info.Shape[1] != 3 || m[5] != 5 {
		t.Errorf("m = %v %+v %v", m, info, err)
	}
}
