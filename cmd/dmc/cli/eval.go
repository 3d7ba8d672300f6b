package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/data/tokenizer"
	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/model"
)

// EvalOptions are the flags of `dmc eval`.
type EvalOptions struct {
	Model     string
	Tokenizer string
	Data      string
	Split     string
	Tasks     string
	JSON      string
	Cache     string
	SeqLen    int
	MaxTokens int
	Separator string
}

func init() { register(newEvalCmd) }

func newEvalCmd(streams *IO) *cobra.Command {
	o := &EvalOptions{}
	cmd := &cobra.Command{
		Use:   "eval",
		Short: "Held-out perplexity with the real (compressed) KV cache, and the real compression rate",
		Long: `Decodes every held-out document with the model's KV cache (the DMC compressed cache for
DMC models, as in serving) and reports perplexity and the real compression rate
(tokens / cache slots) overall, per layer and per KV head.`,
		Example: `  dmc eval --model runs/cr2 --data shards/ --json cr2.json
  dmc eval --model export/ --data ../shared/assets/english-text/tinyshakespeare_input.txt
  dmc eval --model stories260K.bin --data shards/ --cache vanilla
  dmc eval --model stories260K.bin --data shards/ --tasks channels --max-tokens 30000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			_, err := o.Run(ctx, streams)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "a retrofit run directory, a dmc export directory, or any checkpoint (required)")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer (default: the run's, or found next to the model); used for text data")
	f.StringVar(&o.Data, "data", "", "prepared shards (held-out split by default), Arrow/HF dataset, or a .txt/.jsonl/.parquet file (required)")
	f.StringVar(&o.Split, "split", "", "split to evaluate (default: heldout when present, else train)")
	f.StringVar(&o.Tasks, "tasks", "ppl", "comma-separated tasks: ppl (perplexity and real CR), channels (what removing each q/k channel costs a base model: which to repurpose)")
	f.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	f.StringVar(&o.Cache, "cache", "auto", "auto (DMC for DMC models), vanilla or dmc")
	f.IntVar(&o.SeqLen, "seq-len", 0, "longest sequence decoded from one cache (default: the model's context)")
	f.IntVar(&o.MaxTokens, "max-tokens", 0, "stop after about this many scored tokens (0 = all)")
	f.StringVar(&o.Separator, "separator", "", "document separator of .txt data (default <|endoftext|>)")
	_ = cmd.MarkFlagRequired("model")
	_ = cmd.MarkFlagRequired("data")
	return cmd
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
}

// evalModel is what eval needs of a model: weights, tokenizer path and DMC settings.
type evalModel struct {
	w       *model.Weights
	tokPath string
	dmc     *dmc.Config
	source  string
}

func loadEvalModel(path, tokPath string, streams *IO) (*evalModel, error) {
	if isRunDir(path) {
		w, info, ck, err := loadRunDir(path, streams.Err)
		if err != nil {
			return nil, err
		}
		if tokPath == "" {
			tokPath = info.Tokenizer
		}
		return &evalModel{w: w, tokPath: tokPath, dmc: info.DMC, source: fmt.Sprintf("%s (%s)", path, ck.Name)}, nil
	}
	w, src, err := checkpoints.Load(path)
	if err != nil {
		return nil, err
	}
	info, err := checkpoints.ReadDMCInfo(src)
	if err != nil {
		return nil, err
	}
	em := &evalModel{w: w, tokPath: tokPath, source: src}
	if info != nil {
		c := info.Config
		em.dmc = &c
	}
	if em.tokPath == "" {
		em.tokPath, _ = tokenizer.Find(src) // only needed for text data; reported there
	}
	return em, nil
}

// openEvalData opens prepared shards or an Arrow dataset, or prepares a text file on the fly.
func openEvalData(path, split, separator string, tokPath string, vocab int) (*data.Dataset, func(), error) {
	cleanup := func() {}
	ext := strings.ToLower(filepath.Ext(path))
	var tok tokenizer.Tokenizer
	loadTok := func() error {
		if tokPath == "" {
			return fmt.Errorf("%s is text: pass --tokenizer (the one the model was trained with)", path)
		}
		t, err := tokenizer.Load(tokPath)
		if err != nil {
			return err
		}
		if t.VocabSize() != vocab {
			return fmt.Errorf("tokenizer %s has %d tokens but the model expects %d: pass the model's tokenizer", tokPath, t.VocabSize(), vocab)
		}
		tok = t
		return nil
	}
	if ext == ".txt" || ext == ".jsonl" || ext == ".parquet" {
		if err := loadTok(); err != nil {
			return nil, cleanup, err
		}
		tmp, err := os.MkdirTemp("", "dmc-eval-")
		if err != nil {
			return nil, cleanup, err
		}
		cleanup = func() { os.RemoveAll(tmp) }
		if _, err := data.Prepare(data.PrepareOptions{Inputs: []string{path}, Out: tmp, Tokenizer: tok, Separator: separator, Overwrite: true}); err != nil {
			return nil, cleanup, err
		}
		path, split = tmp, "train"
	}
	if split == "" {
		if m, err := data.ReadManifest(path); err == nil {
			if s, ok := m.Splits["heldout"]; ok && s.Docs > 0 {
				split = "heldout"
			}
		}
	}
	opts := data.OpenOptions{Split: split}
	ds, err := data.OpenWith(path, opts)
	if err != nil {
		return nil, cleanup, err
	}
	if col, isText := ds.Column(); isText {
		if err := loadTok(); err != nil {
			return nil, cleanup, fmt.Errorf("column %q holds text: %w", col, err)
		}
		opts.Tokenizer = tok
		if ds, err = data.OpenWith(path, opts); err != nil {
			return nil, cleanup, err
		}
	}
	return ds, cleanup, nil
}

// Run evaluates and prints a table; it returns the report for callers like the demo.
func (o *EvalOptions) Run(ctx context.Context, streams *IO) (*EvalReport, error) {
	tasks := map[string]bool{}
	for _, t := range strings.Split(o.Tasks, ",") {
		switch t = strings.TrimSpace(t); t {
		case "ppl", "channels":
			tasks[t] = true
		default:
			return nil, fmt.Errorf("unknown task %q: available tasks are ppl and channels", t)
		}
	}
	em, err := loadEvalModel(o.Model, o.Tokenizer, streams)
	if err != nil {
		return nil, err
	}
	if tasks["channels"] && em.dmc != nil {
		return nil, fmt.Errorf("--tasks channels measures which channel a retrofit should repurpose, so it needs the base model; %s is already a DMC model (decision channel %d)", em.source, em.dmc.Channel(em.w.Config.HeadDim()))
	}
	ds, cleanup, err := openEvalData(o.Data, o.Split, o.Separator, em.tokPath, em.w.Config.VocabSize)
	defer cleanup()
	if err != nil {
		return nil, err
	}
	rep := &EvalReport{Model: em.source, Data: o.Data}
	opts := eval.PPLOptions{SeqLen: o.SeqLen, MaxTokens: o.MaxTokens}
	if tasks["ppl"] {
		cacheName, factory, err := cacheFactory(o.Cache, em.w.Config, em.dmc)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(streams.Err, "evaluating %s on %s (%s cache)\n", em.source, o.Data, cacheName)
		prog := newProgressLine(streams.Err, "tokens")
		opts.Progress = prog.update
		res, err := eval.Perplexity(ctx, em.w, factory, ds.Documents(), opts)
		prog.done()
		if err != nil {
			return nil, err
		}
		rep.setPPL(res, cacheName, em.dmc)
		printEval(streams, rep)
	}
	if tasks["channels"] {
		fmt.Fprintf(streams.Err, "removing each of the %d head channels of q and k in turn from %s on %s\n", em.w.Config.HeadDim(), em.source, o.Data)
		opts.Progress = nil
		res, err := eval.ChannelAblation(ctx, em.w, ds.Documents, opts, func(c int, r *eval.PPLResult) {
			what := "no channel removed"
			if c >= 0 {
				what = fmt.Sprintf("channel %d removed", c)
			}
			fmt.Fprintf(streams.Err, "  %s: ppl %.4f (%d tokens, %.0f tok/s)\n", what, r.PPL, r.Tokens, r.TokensPerS)
		})
		if err != nil {
			return nil, err
		}
		rep.Channels = res
		if !tasks["ppl"] {
			rep.setPPL(res.Base, "vanilla", nil)
		}
		printChannels(streams, res, em.w.Config.HeadDim())
	}
	if o.JSON != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := writeFileAtomic(o.JSON, append(b, '\n')); err != nil {
			return nil, err
		}
	}
	return rep, nil
}

func (r *EvalReport) setPPL(res *eval.PPLResult, cacheName string, dc *dmc.Config) {
	r.Cache, r.PPL, r.Perplexity, r.Tokens = cacheName, res, res.PPL, res.Tokens
	r.CR, r.CRPerLayer, r.CRPerHead = res.CR, res.CRPerLayer, res.CRPerHead
	if cacheName == "dmc" {
		r.DMC = dc
	}
}

func printChannels(streams *IO, r *eval.ChannelAblationResult, headDim int) {
	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(w, "\nchannel removed\tperplexity\tvs base %.4f\n", r.BasePPL)
	for _, c := range r.PerChannel {
		mark := ""
		if c.Channel == r.Recommended {
			mark = "  <- cheapest"
		}
		if c.Channel == headDim-1 {
			mark += "  (the reference's choice)"
		}
		fmt.Fprintf(w, "%d\t%.4f\t%+.1f%%%s\n", c.Channel, c.PPL, 100*c.Increase, mark)
	}
	w.Flush()
	fmt.Fprintf(streams.Out, "repurpose channel %d for the DMC decision: decision_channel: %d in the recipe, or dmc retrofit --set decision_channel=%d\n",
		r.Recommended, r.Recommended, r.Recommended)
}

func cacheFactory(kind string, cfg model.Config, dc *dmc.Config) (string, eval.CacheFactory, error) {
	switch kind {
	case "auto":
		if dc == nil {
			return "vanilla", eval.VanillaCaches(cfg), nil
		}
		return "dmc", eval.DMCCaches(cfg, *dc), nil
	case "vanilla":
		return "vanilla", eval.VanillaCaches(cfg), nil
	case "dmc":
		c := dmc.DefaultConfig()
		if dc != nil {
			c = *dc
		}
		return "dmc", eval.DMCCaches(cfg, c), nil
	}
	return "", nil, fmt.Errorf("unknown --cache %q: use auto, vanilla or dmc", kind)
}

func printEval(streams *IO, r *EvalReport) {
	w := tabwriter.NewWriter(streams.Out, 0, 2, 2, ' ', 0)
	fmt.Fprintf(w, "perplexity\t%.4f\n", r.PPL.PPL)
	fmt.Fprintf(w, "tokens scored\t%d in %d sequences (%.0f tok/s)\n", r.PPL.Tokens, r.PPL.Sequences, r.PPL.TokensPerS)
	fmt.Fprintf(w, "compression rate\t%.3fx (%s cache)\n", r.CR, r.Cache)
	var layers []string
	for _, c := range r.CRPerLayer {
		layers = append(layers, fmt.Sprintf("%.2f", c))
	}
	fmt.Fprintf(w, "CR per layer\t%s\n", strings.Join(layers, " "))
	for l, hs := range r.CRPerHead {
		var s []string
		for _, c := range hs {
			s = append(s, fmt.Sprintf("%.2f", c))
		}
		fmt.Fprintf(w, "  layer %d heads\t%s\n", l, strings.Join(s, " "))
	}
	w.Flush()
}

// writeFileAtomic writes via a temporary file and rename, so readers never see half a file.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
