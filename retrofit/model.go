package retrofit

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// Model is a loaded model: weights, DMC settings (nil for a vanilla model), tokenizer.
type Model struct {
	Weights *model.Weights
	// DMC is the model's DMC block (an export's, or a run's model.json); nil for a vanilla model.
	DMC *dmc.Config
	// Info is an export's whole dmc block (target and achieved CR); nil otherwise.
	Info *checkpoints.DMCInfo
	// Tokenizer is the model's tokenizer and TokenizerPath its file; both empty when none was
	// found and none was required.
	Tokenizer     tokenizer.Tokenizer
	TokenizerPath string
	// Source says where the weights came from (a path, with the checkpoint name for runs).
	Source string
	// Run is set when the model is a retrofit run directory.
	Run *RunDir
	// Random, when set, means the weights are to be drawn on the GPU (benchmarks of presets,
	// NewBatchDecoder); Weights then holds only the architecture.
	Random *RandomWeights
}

// RandomWeights asks for random bf16 weights drawn on the GPU from Seed, with DMC merges
// forced to compression ForceCR (> 1) when the cache is DMC: throughput benchmarks of presets,
// whose results must be labelled forced.
type RandomWeights struct {
	Seed    uint64
	ForceCR int
}

// RandomModel is cfg's architecture with weights to be drawn on the GPU (see RandomWeights).
func RandomModel(preset string, tok tokenizer.Tokenizer, tokPath string, r RandomWeights) (*Model, error) {
	ci, err := LoadConfig(preset)
	if err != nil {
		return nil, err
	}
	if tok != nil && tok.VocabSize() > ci.Config.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d tokens but %s has a %d-token vocabulary", tokPath, tok.VocabSize(), preset, ci.Config.VocabSize)
	}
	src := fmt.Sprintf("%s, random weights (seed %d)", ci.Source, r.Seed)
	if r.ForceCR > 1 {
		src += fmt.Sprintf(", DMC forced to CR %d", r.ForceCR)
	}
	return &Model{Weights: &model.Weights{Config: ci.Config}, Tokenizer: tok, TokenizerPath: tokPath, Source: src, Random: &r}, nil
}

// LoadOptions refine LoadModel.
type LoadOptions struct {
	// Tokenizer overrides the tokenizer found with the model (next to it, or the run's).
	Tokenizer string
	// NeedTokenizer makes a missing tokenizer an error (generate); otherwise it is left empty.
	NeedTokenizer bool
	// Weights are the weights of a preset (then $DMC_WEIGHTS, then the hub cache).
	Weights string
	// Warn receives notes such as a skipped corrupt checkpoint; nil discards them.
	Warn io.Writer
}

// LoadModel opens a model by any of the names users give: a retrofit run directory (its
// latest verified checkpoint), a dmc export, a Hugging Face directory or hub id, a llama2.c
// .bin, or a preset name whose weights are found as ResolveWeights says.
func LoadModel(path string, opt LoadOptions) (*Model, error) {
	if opt.Warn == nil {
		opt.Warn = io.Discard
	}
	m := &Model{}
	tokPath := opt.Tokenizer
	if IsRunDir(path) {
		rd, err := OpenRun(path)
		if err != nil {
			return nil, err
		}
		w, ck, err := rd.LatestWeights(opt.Warn)
		if err != nil {
			return nil, err
		}
		m.Weights, m.DMC, m.Run, m.Source = w, rd.Model.DMC, rd, fmt.Sprintf("%s (%s)", path, ck)
		if err := CheckFinite(w, m.Source); err != nil {
			return nil, err
		}
		if tokPath == "" {
			tokPath = rd.Model.Tokenizer
		}
	} else {
		w, src, err := ResolveWeights(path, opt.Weights)
		if err != nil {
			return nil, err
		}
		info, err := checkpoints.ReadDMCInfo(src)
		if err != nil {
			return nil, err
		}
		m.Weights, m.Info, m.Source = w, info, src
		if info != nil {
			c := info.Config
			m.DMC = &c
		}
		if tokPath == "" {
			if tokPath, err = tokenizer.Find(src); err != nil && opt.NeedTokenizer {
				return nil, fmt.Errorf("%w; pass --tokenizer PATH", err)
			}
		}
	}
	if tokPath == "" {
		if opt.NeedTokenizer {
			return nil, fmt.Errorf("%s records no tokenizer: pass --tokenizer PATH", path)
		}
		return m, nil
	}
	tok, err := LoadTokenizer(tokPath, m.Weights.Config.VocabSize)
	if err != nil {
		if opt.NeedTokenizer {
			return nil, err
		}
		tok = nil // reported when text data needs it (OpenEvalData)
	}
	m.Tokenizer, m.TokenizerPath = tok, tokPath
	return m, nil
}

// LoadTokenizer loads a tokenizer and checks it has the model's vocabulary size.
func LoadTokenizer(path string, vocab int) (tokenizer.Tokenizer, error) {
	tok, err := tokenizer.Load(path)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() != vocab {
		return nil, fmt.Errorf("tokenizer %s has %d tokens but the model expects %d: pass the tokenizer the model was trained with (--tokenizer)",
			path, tok.VocabSize(), vocab)
	}
	return tok, nil
}

// ConfigInfo is a model's architecture without its weights.
type ConfigInfo struct {
	Config model.Config
	Source string
	DMC    *checkpoints.DMCInfo
}

// LoadConfig reads an architecture from a preset name, a YAML model config file (the presets'
// format, configs/models/*.yaml) or a checkpoint, without weights.
func LoadConfig(path string) (ConfigInfo, error) {
	if cfg, err := model.Preset(path); err == nil {
		return ConfigInfo{Config: cfg, Source: "preset " + path}, nil
	}
	if ext := strings.ToLower(filepath.Ext(path)); ext == ".yaml" || ext == ".yml" {
		b, err := os.ReadFile(path)
		if err != nil {
			return ConfigInfo{}, fmt.Errorf("model config: %w", err)
		}
		cfg, err := model.ParseConfigYAML(b)
		if err != nil {
			return ConfigInfo{}, fmt.Errorf("model config %s: %w", path, err)
		}
		if err := cfg.Validate(); err != nil {
			return ConfigInfo{}, fmt.Errorf("model config %s: %w", path, err)
		}
		return ConfigInfo{Config: cfg, Source: "config " + path}, nil
	}
	cfg, src, err := checkpoints.LoadConfig(path)
	if err != nil {
		if !strings.ContainsAny(path, "/.") {
			return ConfigInfo{}, fmt.Errorf("%q is not a preset (known: %s) and not a checkpoint: %w",
				path, strings.Join(model.PresetNames(), ", "), err)
		}
		return ConfigInfo{}, err
	}
	info, err := checkpoints.ReadDMCInfo(src)
	return ConfigInfo{Config: cfg, Source: src, DMC: info}, err
}

// ResolveWeights loads a checkpoint, or for a preset finds its weights (weights, then
// $DMC_WEIGHTS, then the Hugging Face cache) and checks they have the preset's shape.
func ResolveWeights(modelArg, weights string) (*model.Weights, string, error) {
	w, src, err := resolveWeights(modelArg, weights)
	if err == nil {
		err = CheckFinite(w, src)
	}
	if err != nil {
		return nil, "", err
	}
	return w, src, nil
}

// CheckFinite reports the first NaN or infinite weight, naming its tensor.
func CheckFinite(w *model.Weights, src string) error {
	for _, t := range w.Tensors() {
		for i, v := range t.Data {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%s: tensor %s holds %v at index %d: the checkpoint is corrupt or was trained into divergence", src, t.Name, v, i)
			}
		}
	}
	return nil
}

func resolveWeights(modelArg, weights string) (*model.Weights, string, error) {
	preset, perr := model.Preset(modelArg)
	if perr != nil {
		return checkpoints.Load(modelArg)
	}
	var tried []string
	candidates := []string{weights, os.Getenv("DMC_WEIGHTS"), preset.HFRepo}
	labels := []string{"--weights", "$DMC_WEIGHTS", "the Hugging Face cache entry " + preset.HFRepo}
	for i, c := range candidates {
		if c == "" {
			continue
		}
		w, src, err := checkpoints.Load(c)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s (%s): %v", labels[i], c, err))
			if i < 2 {
				return nil, "", fmt.Errorf("weights for preset %s from %s: %w", modelArg, labels[i], err)
			}
			continue
		}
		wc, pc := w.Config, preset
		wc.Name, wc.HFRepo, pc.Name, pc.HFRepo, wc.RoPE, pc.RoPE, wc.MaxSeqLen, pc.MaxSeqLen = "", "", "", "", "", "", 0, 0
		if wc != pc {
			return nil, "", fmt.Errorf("the weights at %s do not have the shape of preset %s (got %+v)", src, modelArg, w.Config)
		}
		return w, src, nil
	}
	msg := fmt.Sprintf("preset %s needs its weights (%s parameters). Download them, e.g. `huggingface-cli download %s`, or pass --weights DIR (a Hugging Face Llama directory or a llama2.c .bin), or set DMC_WEIGHTS",
		modelArg, HumanCount(preset.NumParams()), preset.HFRepo)
	if len(tried) > 0 {
		msg += "; tried: " + fmt.Sprint(tried)
	}
	return nil, "", errors.New(msg)
}

// HumanCount writes n with a K/M/B suffix and in full: "1.50M (1500000)".
func HumanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB (%d)", float64(n)/1e9, n)
	case n >= 1e6:
		return fmt.Sprintf("%.2fM (%d)", float64(n)/1e6, n)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK (%d)", float64(n)/1e3, n)
	}
	return fmt.Sprint(n)
}
