package checkpoints

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/model"
)

// File names of a Hugging Face checkpoint directory.
const (
	hfConfigFile  = "config.json"
	hfSingleFile  = "model.safetensors"
	hfIndexFile   = "model.safetensors.index.json"
	hfShardFormat = "model-%05d-of-%05d.safetensors"
)

// hfIndex is model.safetensors.index.json.
type hfIndex struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// LoadHF reads a Hugging Face Llama directory: config.json plus model.safetensors or the shards
// named by model.safetensors.index.json. Every tensor's presence and shape is checked against
// the config (errors name the tensor) before the weights are allocated, so a config that does
// not match the files cannot make it allocate more than the files hold. The result has the
// RoPEHalf layout; when tie_word_embeddings is set, lm_head.weight is not needed (and ignored).
func LoadHF(dir string) (*model.Weights, error) {
	hc, err := ReadHFConfig(dir)
	if err != nil {
		return nil, err
	}
	files, where, err := openHFWeights(dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	w, err := loadHFWeights(hc.Config, where)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return w, nil
}

// openHFWeights opens the safetensors files of dir and maps every tensor name to its file.
func openHFWeights(dir string) ([]*SafetensorsFile, map[string]*SafetensorsFile, error) {
	where := map[string]*SafetensorsFile{}
	single := filepath.Join(dir, hfSingleFile)
	if _, err := os.Stat(single); err == nil {
		f, err := OpenSafetensors(single)
		if err != nil {
			return nil, nil, err
		}
		for _, n := range f.Names() {
			where[n] = f
		}
		return []*SafetensorsFile{f}, where, nil
	}
	indexPath := filepath.Join(dir, hfIndexFile)
	b, err := os.ReadFile(indexPath)
	if errors.Is(err, fs.ErrNotExist) {
		hint := ""
		for _, other := range []string{"pytorch_model.bin", "pytorch_model.bin.index.json", "consolidated.00.pth"} {
			if _, err := os.Stat(filepath.Join(dir, other)); err == nil {
				hint = fmt.Sprintf(" (found %s: PyTorch pickles are not read; convert them to safetensors first, e.g. with transformers' save_pretrained(safe_serialization=True))", other)
				break
			}
		}
		return nil, nil, fmt.Errorf("%s has neither %s nor %s%s", dir, hfSingleFile, hfIndexFile, hint)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read shard index: %w", err)
	}
	var idx hfIndex
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, nil, fmt.Errorf("%s is not a valid shard index: %w", indexPath, err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, nil, fmt.Errorf("%s has an empty weight_map; re-download or re-export the checkpoint", indexPath)
	}
	byFile := map[string]*SafetensorsFile{}
	var files []*SafetensorsFile
	fail := func(err error) ([]*SafetensorsFile, map[string]*SafetensorsFile, error) {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	names := make([]string, 0, len(idx.WeightMap))
	for n := range idx.WeightMap {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		shard := idx.WeightMap[name]
		if shard == "" || shard != filepath.Base(shard) || shard == "." || shard == ".." || !isSafetensorsName(shard) {
			return fail(fmt.Errorf("%s maps %q to %q, which is not a .safetensors file name in the same directory", indexPath, name, shard))
		}
		f, ok := byFile[shard]
		if !ok {
			var err error
			if f, err = OpenSafetensors(filepath.Join(dir, shard)); err != nil {
				return fail(fmt.Errorf("shard listed in %s: %w", hfIndexFile, err))
			}
			byFile[shard] = f
			files = append(files, f)
		}
		if _, ok := f.Info(name); !ok {
			return fail(fmt.Errorf("%s says tensor %q is in %s, but that shard does not contain it", indexPath, name, shard))
		}
		where[name] = f
	}
	return files, where, nil
}

// loadHFWeights checks names and shapes against cfg, then reads every tensor.
func loadHFWeights(cfg model.Config, where map[string]*SafetensorsFile) (*model.Weights, error) {
	// Bound the layer count by the tensors on disk before allocating per-layer structures.
	if cfg.NLayers > len(where) {
		return nil, fmt.Errorf("config says %d layers but the checkpoint holds only %d tensors; config.json does not match the weights", cfg.NLayers, len(where))
	}
	shapes := (&model.Weights{Config: cfg, Layers: make([]model.Layer[float32], cfg.NLayers)}).Tensors()
	want := map[string]bool{}
	var missing []string
	for _, t := range shapes {
		want[t.Name] = true
		f, ok := where[t.Name]
		if !ok {
			missing = append(missing, t.Name)
			continue
		}
		info, _ := f.Info(t.Name)
		if !slices.Equal(info.Shape, t.Shape) {
			return nil, fmt.Errorf("tensor %s in %s has shape %v, but config.json implies %v; the config does not match the weights", t.Name, filepath.Base(f.Path()), info.Shape, t.Shape)
		}
		if !info.DType.convertible() {
			return nil, fmt.Errorf("tensor %s in %s has dtype %s; weights must be F32, F16, BF16 or F64", t.Name, filepath.Base(f.Path()), info.DType)
		}
	}
	if len(missing) > 0 {
		hint := ""
		if slices.Contains(missing, "lm_head.weight") && len(missing) == 1 {
			hint = " (if the classifier shares the embedding, set \"tie_word_embeddings\": true in config.json)"
		}
		return nil, fmt.Errorf("missing %d tensor(s): %s%s", len(missing), abbreviate(missing, 5), hint)
	}
	var unexpected []string
	for name := range where {
		if want[name] || strings.HasSuffix(name, ".rotary_emb.inv_freq") || (cfg.TieEmbeddings && name == "lm_head.weight") {
			continue
		}
		unexpected = append(unexpected, name)
	}
	if len(unexpected) > 0 {
		sort.Strings(unexpected)
		return nil, fmt.Errorf("checkpoint has %d tensor(s) a Llama model does not use: %s; it is not a plain Llama checkpoint", len(unexpected), abbreviate(unexpected, 5))
	}
	w, err := model.NewParams[float32](cfg)
	if err != nil {
		return nil, err
	}
	tensors := w.Tensors()
	errs := make([]error, len(tensors))
	var next sync.Mutex
	i := 0
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), 4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				next.Lock()
				j := i
				i++
				next.Unlock()
				if j >= len(tensors) {
					return
				}
				t := tensors[j]
				errs[j] = where[t.Name].ReadFloat32(t.Name, t.Data)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return w, nil
}

func abbreviate(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:n], ", ") + fmt.Sprintf(", ... (%d more)", len(names)-n)
}

// WriteHF writes w as a Hugging Face Llama directory that transformers' LlamaForCausalLM loads:
// config.json (standard fields plus extraConfig merged at the top level, e.g. a "dmc" block) and
// model.safetensors, or model-0000i-of-0000n.safetensors shards with model.safetensors.index.json
// when the weights exceed maxShardBytes (≤ 0: never shard). dtype is f32, f16 or bf16. Weights
// with the interleaved (llama2.c) RoPE layout have their q/k rows permuted to the rotate-half
// layout as they are written (one tensor copy at a time; w is not modified), so the directory
// computes the same model. Each file is written atomically; weight files come first,
// config.json last, and stale weight files of an earlier export are removed.
func WriteHF(dir string, w *model.Weights, dtype string, extraConfig map[string]any, maxShardBytes int64) error {
	dt, err := ParseDType(dtype)
	if err != nil {
		return fmt.Errorf("write Hugging Face checkpoint: %w", err)
	}
	if err := w.CheckShapes(); err != nil {
		return fmt.Errorf("write Hugging Face checkpoint: %w", err)
	}
	c := w.Config
	var toHalf func(name string, data []float32) []float32
	if c.RoPE == model.RoPEInterleaved {
		// Permute q/k rows one tensor at a time as they are written (see WithRoPELayout).
		toHalf = func(name string, data []float32) []float32 {
			switch {
			case strings.HasSuffix(name, ".self_attn.q_proj.weight"):
				return permuteHeadRows(data, c.NHeads, c.HeadDim(), c.Dim, true)
			case strings.HasSuffix(name, ".self_attn.k_proj.weight"):
				return permuteHeadRows(data, c.NKVHeads, c.HeadDim(), c.Dim, true)
			}
			return data
		}
	}
	cfgJSON, err := hfConfigJSON(c, dt, extraConfig)
	if err != nil {
		return fmt.Errorf("write Hugging Face checkpoint: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write Hugging Face checkpoint: %w", err)
	}
	shards := splitShards(w.Tensors(), int64(dt.Size()), maxShardBytes)
	meta := map[string]string{"format": "pt"}
	keep := map[string]bool{}
	if len(shards) == 1 {
		if err := writeSafetensors(filepath.Join(dir, hfSingleFile), shards[0], dt, meta, toHalf); err != nil {
			return err
		}
		keep[hfSingleFile] = true
	} else {
		idx := hfIndex{Metadata: map[string]any{}, WeightMap: map[string]string{}}
		var total int64
		for i, s := range shards {
			name := fmt.Sprintf(hfShardFormat, i+1, len(shards))
			if err := writeSafetensors(filepath.Join(dir, name), s, dt, meta, toHalf); err != nil {
				return err
			}
			keep[name] = true
			for _, t := range s {
				idx.WeightMap[t.Name] = name
				total += int64(len(t.Data)) * int64(dt.Size())
			}
		}
		idx.Metadata["total_size"] = total
		b, err := json.MarshalIndent(idx, "", "  ")
		if err != nil {
			return fmt.Errorf("write shard index: %w", err)
		}
		if err := writeFileAtomic(filepath.Join(dir, hfIndexFile), append(b, '\n')); err != nil {
			return err
		}
		keep[hfIndexFile] = true
	}
	if err := removeStaleWeights(dir, keep); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, hfConfigFile), cfgJSON)
}

// splitShards packs tensors, in order, into groups of at most maxBytes (a larger tensor gets a
// group of its own).
func splitShards(ts []model.Tensor[float32], elemBytes, maxBytes int64) [][]model.Tensor[float32] {
	if maxBytes <= 0 {
		return [][]model.Tensor[float32]{ts}
	}
	var out [][]model.Tensor[float32]
	var cur []model.Tensor[float32]
	var size int64
	for _, t := range ts {
		b := int64(len(t.Data)) * elemBytes
		if len(cur) > 0 && size+b > maxBytes {
			out = append(out, cur)
			cur, size = nil, 0
		}
		cur = append(cur, t)
		size += b
	}
	return append(out, cur)
}

// removeStaleWeights deletes weight files of an earlier export that the new one does not use,
// so a loader never mixes old and new tensors.
func removeStaleWeights(dir string, keep map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("write Hugging Face checkpoint: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		var a, b int
		stale := n == hfSingleFile || n == hfIndexFile
		if _, err := fmt.Sscanf(n, hfShardFormat, &a, &b); err == nil && fmt.Sprintf(hfShardFormat, a, b) == n {
			stale = true
		}
		if stale && !keep[n] {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("remove stale weight file: %w", err)
			}
		}
	}
	return nil
}

func writeFileAtomic(path string, b []byte) error { return atomicfile.Write(path, b) }
