package retrofit

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/internal/atomicfile"
)

// EvalSpec is what Evaluate measures (the flags of `dmc eval`).
type EvalSpec struct {
	Model     string
	Tokenizer string
	Data      string
	Split     string
	Tasks     string // comma-separated: ppl, channels
	JSON      string // also write the report here
	Cache     string // auto, vanilla, dmc
	SeqLen    int
	MaxTokens int
	Separator string
	// TextField (.jsonl) and TextColumn (Parquet, Arrow, HF datasets) name the text to tokenise.
	TextField, TextColumn string
}

// EvalHooks receive progress: Start before each task, PPL with tokens scored so far, Channel
// after each channel of the ablation. Any may be nil.
type EvalHooks struct {
	Start   func(what string)
	PPL     func(tokens int)
	Channel func(channel int, r *eval.PPLResult)
}

// EvalReport is the JSON written by `dmc eval --json`.
type EvalReport struct {
	Model string          `json:"model"`
	Data  string          `json:"data"`
	Cache string          `json:"cache"`
	DMC   *dmc.Config     `json:"dmc,omitempty"`
	PPL   *eval.PPLResult `json:"ppl_result"`
	// Flattened headline numbers for scripts.
	Perplexity float64     `json:"ppl"`
	Tokens     int         `json:"tokens"`
	CR         float64     `json:"cr"`
	CRPerLayer []float64   `json:"cr_per_layer"`
	CRPerHead  [][]float64 `json:"cr_per_head"`
	// Channels is the --tasks channels result.
	Channels *eval.ChannelAblationResult `json:"channels,omitempty"`
	// HeadDim is the model's head dimension (for printing the channel table).
	HeadDim int `json:"-"`
}

// Evaluate runs the tasks of spec on its model and data with the chosen cache.
func Evaluate(ctx context.Context, spec EvalSpec, hooks EvalHooks) (*EvalReport, error) {
	tasks := map[string]bool{}
	for _, t := range strings.Split(spec.Tasks, ",") {
		switch t = strings.TrimSpace(t); t {
		case "ppl", "channels":
			tasks[t] = true
		default:
			return nil, fmt.Errorf("unknown task %q: available tasks are ppl and channels", t)
		}
	}
	m, err := LoadModel(spec.Model, LoadOptions{Tokenizer: spec.Tokenizer})
	if err != nil {
		return nil, err
	}
	cfg := m.Weights.Config
	if tasks["channels"] && m.DMC != nil {
		return nil, fmt.Errorf("--tasks channels measures which channel a retrofit should repurpose, so it needs the base model; %s is already a DMC model (decision channel %d)", m.Source, m.DMC.Channel(cfg.HeadDim()))
	}
	ds, cleanup, err := OpenEvalDataWith(spec.Data, EvalDataOptions{Split: spec.Split, Separator: spec.Separator,
		TokenizerPath: m.TokenizerPath, Vocab: cfg.VocabSize, TextField: spec.TextField, TextColumn: spec.TextColumn})
	defer cleanup()
	if err != nil {
		return nil, err
	}
	rep := &EvalReport{Model: m.Source, Data: spec.Data, HeadDim: cfg.HeadDim()}
	opts := eval.PPLOptions{SeqLen: spec.SeqLen, MaxTokens: spec.MaxTokens}
	if tasks["ppl"] {
		cache, err := m.Cache(spec.Cache)
		if err != nil {
			return nil, err
		}
		if hooks.Start != nil {
			hooks.Start(fmt.Sprintf("evaluating %s on %s (%s cache)", m.Source, spec.Data, cache.Name))
		}
		opts.Progress = hooks.PPL
		res, err := eval.Perplexity(ctx, m.Weights, cache.Factory(cfg), ds.Documents(), opts)
		if err != nil {
			return nil, err
		}
		rep.setPPL(res, cache)
	}
	if tasks["channels"] {
		if hooks.Start != nil {
			hooks.Start(fmt.Sprintf("removing each of the %d head channels of q and k in turn from %s on %s", cfg.HeadDim(), m.Source, spec.Data))
		}
		opts.Progress = nil
		progress := hooks.Channel
		if progress == nil {
			progress = func(int, *eval.PPLResult) {}
		}
		res, err := eval.ChannelAblation(ctx, m.Weights, ds.Documents, opts, progress)
		if err != nil {
			return nil, err
		}
		rep.Channels = res
		if !tasks["ppl"] {
			rep.setPPL(res.Base, Cache{Name: "vanilla"})
		}
	}
	if spec.JSON != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := atomicfile.Write(spec.JSON, append(b, '\n')); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

func (r *EvalReport) setPPL(res *eval.PPLResult, c Cache) {
	r.Cache, r.PPL, r.Perplexity, r.Tokens = c.Name, res, res.PPL, res.Tokens
	r.CR, r.CRPerLayer, r.CRPerHead = res.CR, res.CRPerLayer, res.CRPerHead
	r.DMC = c.DMC
}
