package retrofit

import (
	"fmt"
	"path/filepath"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/model"
)

// PoolKVHeads returns w with its KV heads mean-pooled into kvHeads groups, the initialisation
// of GQA uptraining (Ainslie et al. 2023): KV head g of the result is the mean of the key (and
// value) projections of the original heads g·r … g·r + r − 1, r = NKVHeads/kvHeads; the query
// heads are kept, each group now sharing one KV head. Continued training on the same tokens
// (dmc retrofit --control) is the uptraining; it is the GQA baseline DMC is compared with at
// the same KV cache size.
func PoolKVHeads(w *model.Weights, kvHeads int) (*model.Weights, error) {
	c := w.Config
	if kvHeads < 1 || c.NKVHeads%kvHeads != 0 {
		return nil, fmt.Errorf("--kv-heads %d must divide the model's %d KV heads", kvHeads, c.NKVHeads)
	}
	if kvHeads == c.NKVHeads {
		return nil, fmt.Errorf("the model already has %d KV heads: nothing to pool", kvHeads)
	}
	r, D, d := c.NKVHeads/kvHeads, c.HeadDim(), c.Dim
	nc := c
	nc.NKVHeads = kvHeads
	out := &model.Weights{Config: nc, Embed: w.Embed, FinalNorm: w.FinalNorm, Output: w.Output, Layers: make([]model.Layer[float32], len(w.Layers))}
	pool := func(src []float32) []float32 {
		dst := make([]float32, kvHeads*D*d)
		for g := 0; g < kvHeads; g++ {
			for row := 0; row < D; row++ {
				o := dst[(g*D+row)*d : (g*D+row+1)*d]
				for h := g * r; h < (g+1)*r; h++ {
					s := src[(h*D+row)*d : (h*D+row+1)*d]
					for i := range o {
						o[i] += s[i]
					}
				}
				for i := range o {
					o[i] /= float32(r)
				}
			}
		}
		return dst
	}
	for i, l := range w.Layers {
		l.Wk, l.Wv = pool(l.Wk), pool(l.Wv)
		out.Layers[i] = l
	}
	if err := out.CheckShapes(); err != nil {
		return nil, err
	}
	return out, nil
}

// ConvertGQA writes the model at src with its KV heads pooled to kvHeads as a Hugging Face
// directory (fp32), the starting point of a GQA-uptraining run.
func ConvertGQA(src, out string, kvHeads int) (model.Config, error) {
	m, err := LoadModel(src, LoadOptions{})
	if err != nil {
		return model.Config{}, err
	}
	if m.DMC != nil {
		return model.Config{}, fmt.Errorf("%s is a DMC model: pool the KV heads of its base model instead", src)
	}
	w, err := PoolKVHeads(m.Weights, kvHeads)
	if err != nil {
		return model.Config{}, err
	}
	if err := checkpoints.WriteHF(out, w, "fp32", nil, 1<<40); err != nil {
		return model.Config{}, err
	}
	if m.TokenizerPath != "" {
		if err := atomicfile.Copy(m.TokenizerPath, filepath.Join(out, tokenizerFileName(m.TokenizerPath))); err != nil {
			return model.Config{}, fmt.Errorf("copy the tokenizer: %w", err)
		}
	}
	return w.Config, nil
}
