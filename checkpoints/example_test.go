package checkpoints_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/model"
)

// Convert a llama2.c checkpoint to a Hugging Face directory with an extra "dmc" block in its
// config.json, then load it back through the single entry point.
func Example() {
	bin := "../../shared/assets/tinyllamas-stories260K/stories260K.bin"
	if _, err := os.Stat(bin); err != nil {
		// Without the shared assets, demonstrate on random weights instead.
		cfg := model.Config{Dim: 64, HiddenDim: 172, NLayers: 5, NHeads: 8, NKVHeads: 4, VocabSize: 512,
			MaxSeqLen: 512, NormEps: 1e-5, RopeTheta: 10000, RoPE: model.RoPEInterleaved, TieEmbeddings: true}
		w, err := model.RandomParams[float32](cfg, 1)
		if err != nil {
			log.Fatal(err)
		}
		dir, _ := os.MkdirTemp("", "ckpt")
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "random.bin")
		if err := checkpoints.WriteLlama2C(bin, w); err != nil {
			log.Fatal(err)
		}
	}
	w, _, err := checkpoints.Load(bin)
	if err != nil {
		log.Fatal(err)
	}
	out, err := os.MkdirTemp("", "hf")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(out)
	extra := map[string]any{"dmc": map[string]any{"window": 12}}
	if err := checkpoints.WriteHF(out, w, "bf16", extra, 0); err != nil {
		log.Fatal(err)
	}
	cfg, _, err := checkpoints.LoadConfig(out) // reads config.json only
	if err != nil {
		log.Fatal(err)
	}
	hf, _, err := checkpoints.Load(out)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(w.Config.RoPE, "->", hf.Config.RoPE)
	fmt.Println(cfg.Dim, cfg.NLayers, cfg.NHeads, cfg.NKVHeads, cfg.VocabSize)
	// Output:
	// interleaved -> half
	// 64 5 8 4 512
}

// Inspect a safetensors file without reading its tensors.
func ExampleOpenSafetensors() {
	dir, _ := os.MkdirTemp("", "st")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "x.safetensors")
	t := []model.Tensor[float32]{{Name: "w", Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}}}
	if err := checkpoints.WriteSafetensors(path, t, checkpoints.BF16, map[string]string{"format": "pt"}); err != nil {
		log.Fatal(err)
	}
	f, err := checkpoints.OpenSafetensors(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	for _, info := range f.Tensors() {
		fmt.Println(info.Name, info.DType, info.Shape)
	}
	v, _ := f.Float32("w")
	fmt.Println(v)
	// Output:
	// w BF16 [2 3]
	// [1 2 3 4 5 6]
}
