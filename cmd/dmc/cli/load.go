package cli

import (
	"fmt"
	"strings"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/model"
)

// languageModel is a loaded checkpoint with its tokenizer and, for DMC exports, its DMC block.
type languageModel struct {
	Weights *model.Weights
	Tok     tokenizer.Tokenizer
	Source  string
	DMC     *checkpoints.DMCInfo
}

// loadLanguageModel loads weights and a tokenizer (tokPath, or the one found next to the model).
func loadLanguageModel(modelPath, tokPath string) (*languageModel, error) {
	w, src, err := checkpoints.Load(modelPath)
	if err != nil {
		return nil, err
	}
	info, err := checkpoints.ReadDMCInfo(src)
	if err != nil {
		return nil, err
	}
	if tokPath == "" {
		if tokPath, err = tokenizer.Find(src); err != nil {
			return nil, fmt.Errorf("%w; pass --tokenizer PATH", err)
		}
	}
	tok, err := tokenizer.Load(tokPath)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() != w.Config.VocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d tokens but the model %s expects %d: pass the tokenizer the model was trained with (--tokenizer)",
			tokPath, tok.VocabSize(), src, w.Config.VocabSize)
	}
	return &languageModel{Weights: w, Tok: tok, Source: src, DMC: info}, nil
}

// newCache builds the KV cache the user asked for: "auto" picks DMC for DMC exports.
func (lm *languageModel) newCache(kind string) (model.KVCache[float32], error) {
	switch kind {
	case "auto":
		if lm.DMC == nil {
			return model.NewVanillaCache[float32](lm.Weights.Config), nil
		}
		return dmc.NewCompressedCache[float32](lm.Weights.Config, lm.DMC.Config)
	case "vanilla":
		return model.NewVanillaCache[float32](lm.Weights.Config), nil
	case "dmc":
		cfg := dmc.DefaultConfig()
		if lm.DMC != nil {
			cfg = lm.DMC.Config
		}
		return dmc.NewCompressedCache[float32](lm.Weights.Config, cfg)
	}
	return nil, fmt.Errorf("unknown --cache %q: use auto, vanilla or dmc", kind)
}

func (lm *languageModel) describeCache(c model.KVCache[float32]) string {
	if cc, ok := c.(*dmc.CompressedCache[float32]); ok {
		return fmt.Sprintf("DMC, %d slots, compression %.2fx", cc.TotalSlots(), cc.CR())
	}
	return "vanilla"
}

// resolveConfig reads an architecture from a preset name or a checkpoint, without weights.
func resolveConfig(modelArg string) (model.Config, string, *checkpoints.DMCInfo, error) {
	if cfg, err := model.Preset(modelArg); err == nil {
		return cfg, "preset " + modelArg, nil, nil
	}
	cfg, src, err := checkpoints.LoadConfig(modelArg)
	if err != nil {
		if !strings.ContainsAny(modelArg, "/.") {
			return model.Config{}, "", nil, fmt.Errorf("%q is not a preset (known: %s) and not a checkpoint: %w",
				modelArg, strings.Join(model.PresetNames(), ", "), err)
		}
		return model.Config{}, "", nil, err
	}
	info, err := checkpoints.ReadDMCInfo(src)
	return cfg, src, info, err
}
