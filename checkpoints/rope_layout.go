package checkpoints

import (
	"fmt"

	"github.com/dmc-project/dmc/model"
)

// WithRoPELayout returns weights computing the same function under the given RoPE channel
// layout. llama2.c (and Meta's original checkpoints) rotate adjacent pairs (2i, 2i+1); Hugging
// Face rotates (i, i+D/2). Converting permutes the rows of every head of wq and wk — within a
// head the Hugging Face row order is [even channels..., odd channels...], exactly what
// transformers' convert_llama_weights_to_hf.py does — so q·k, and hence the model, is unchanged.
// w itself is returned when it already has the layout; otherwise the result shares every tensor
// with w except the permuted wq and wk (and w is not modified).
func WithRoPELayout(w *model.Weights, layout model.RoPELayout) (*model.Weights, error) {
	if layout != model.RoPEInterleaved && layout != model.RoPEHalf {
		return nil, fmt.Errorf("unknown RoPE layout %q: use %q or %q", layout, model.RoPEInterleaved, model.RoPEHalf)
	}
	if err := w.CheckShapes(); err != nil {
		return nil, err
	}
	if w.Config.RoPE == layout {
		return w, nil
	}
	c := w.Config
	out := *w
	out.Config.RoPE = layout
	out.Layers = make([]model.Layer[float32], len(w.Layers))
	D := c.HeadDim()
	for i, l := range w.Layers {
		l.Wq = permuteHeadRows(l.Wq, c.NHeads, D, c.Dim, layout == model.RoPEHalf)
		l.Wk = permuteHeadRows(l.Wk, c.NKVHeads, D, c.Dim, layout == model.RoPEHalf)
		out.Layers[i] = l
	}
	return &out, nil
}

// permuteHeadRows reorders the D rows (each of cols values) of every head. toHalf moves
// interleaved row 2i to i and 2i+1 to D/2+i; otherwise the inverse.
func permuteHeadRows(src []float32, heads, D, cols int, toHalf bool) []float32 {
	dst := make([]float32, len(src))
	for h := 0; h < heads; h++ {
		base := h * D
		for i := 0; i < D/2; i++ {
			for j := 0; j < 2; j++ {
				inter := base + 2*i + j    // row in the interleaved layout
				half := base + j*(D/2) + i // the same channel in the half layout
				from, to := half, inter
				if toHalf {
					from, to = inter, half
				}
				copy(dst[to*cols:(to+1)*cols], src[from*cols:(from+1)*cols])
			}
		}
	}
	return dst
}

// RoPEChannel is where channel c of a head of D channels lands when WithRoPELayout converts
// from one layout to the other (c itself when the layouts are equal). Per-channel metadata, such
// as a DMC decision channel, must be remapped with it; channels 0 and D-1 never move.
func RoPEChannel(c, D int, from, to model.RoPELayout) int {
	switch {
	case from == to:
		return c
	case to == model.RoPEHalf: // interleaved 2i+j → j·D/2 + i
		return (c%2)*(D/2) + c/2
	default: // half j·D/2 + i → 2i+j
		return 2*(c%(D/2)) + c/(D/2)
	}
}
