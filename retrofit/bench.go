package retrofit

import (
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dmc-project/dmc/dmc"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
)

// BenchOptions configure BenchDecode (the flags of `dmc bench decode`).
type BenchOptions struct {
	Model         string // preset (with RandomWeights) or checkpoint / export
	RandomWeights bool
	CR            string // comma-separated: 1|vanilla, dmc, or N > 1 (forced)
	Batch         string // comma-separated batch sizes, or max
	Prompt, Gen   int
	Seed          uint64
	Device        int
	BandwidthGiB  float64
	Command       string // recorded in the report
	// Data, when set, supplies the prompts: consecutive windows of Prompt tokens of its
	// documents (prepared shards' held-out split, or a text file), so that a model's learned
	// DMC decisions see real text; the windows repeat when the data holds fewer than the batch.
	Data string
	// Warn hears notes about the model (a corrupt latest checkpoint skipped); nil discards them.
	Warn io.Writer
}

// BenchCR is one compression setting of a benchmark.
type BenchCR struct {
	Label   string // "vanilla", "dmc", "forced-4"
	DMC     bool
	ForceCR int
	// Expect (learned decisions only) is the compression the model is expected to reach, an
	// export's measured CR: it sizes --batch max, with a margin (learnedCRMargin).
	Expect float64
}

// learnedCRMargin sizes a learned-decision batch for a compression this much below the one
// measured at export, since prompts compress differently.
const learnedCRMargin = 0.8

// Slots is the most KV slots a (layer, KV head) row holds for a sequence of n positions: n,
// with a forced rate N one slot per N tokens plus the one being merged into, and with learned
// decisions of expected compression E, n/(E·learnedCRMargin).
func (c BenchCR) Slots(n int) int {
	switch {
	case c.ForceCR > 1:
		return (n+c.ForceCR-1)/c.ForceCR + 1
	case c.Expect > 1:
		return int(math.Ceil(float64(n)/(c.Expect*learnedCRMargin))) + 1
	}
	return n
}

// ParseCRList parses --cr.
func ParseCRList(s string) ([]BenchCR, error) {
	var out []BenchCR
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "1" || f == "vanilla":
			out = append(out, BenchCR{Label: "vanilla"})
		case f == "dmc":
			out = append(out, BenchCR{Label: "dmc", DMC: true})
		default:
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("--cr %q: each entry must be 1, vanilla, dmc, or an integer N > 1", f)
			}
			out = append(out, BenchCR{Label: fmt.Sprintf("forced-%d", n), DMC: true, ForceCR: n})
		}
	}
	return out, nil
}

// ParseBatches parses --batch; "max" is fit, the largest batch that fits.
func ParseBatches(s string, fit int) ([]int, error) {
	if s == "max" {
		if fit < 1 {
			return nil, fmt.Errorf("not even one sequence fits in GPU memory next to the model: shorten --prompt/--gen")
		}
		return []int{fit}, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--batch %q: use positive integers or max", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// BenchRow is one measured configuration.
type BenchRow struct {
	CR              string  `json:"cr"`
	Forced          bool    `json:"forced_cr"`
	Batch           int     `json:"batch"`
	MaxBatchFits    int     `json:"max_batch_fits"`
	Prompt          int     `json:"prompt"`
	Gen             int     `json:"gen"`
	PrefillMs       float64 `json:"prefill_ms"`
	PrefillTokS     float64 `json:"prefill_tok_s"`
	DecodeTokS      float64 `json:"decode_tok_s"`
	StepMsMedian    float64 `json:"step_ms_median"`
	StepMsMean      float64 `json:"step_ms_mean"`
	RooflineStepMs  float64 `json:"roofline_step_ms"`
	FracOfRoofline  float64 `json:"frac_of_roofline"`
	WeightBytes     int64   `json:"weight_bytes"`
	KVBytesPerStep  float64 `json:"kv_bytes_read_per_step"`
	RealCR          float64 `json:"real_cr"`
	PageWaste       float64 `json:"page_waste"`
	PagesUsed       int     `json:"pages_used"`
	PagesTotal      int     `json:"pages_total"`
	PoolUsedFrac    float64 `json:"pool_used_frac"`
	GPUMemGiB       float64 `json:"gpu_mem_gib"`
	KVPoolGiB       float64 `json:"kv_pool_gib"`
	DMCStateGiB     float64 `json:"dmc_state_gib"`
	SpeedupVsVanila float64 `json:"speedup_vs_vanilla,omitempty"`
	// ProfileMs is the mean time per decode step of each op kind (DMC_PROFILE=1 only).
	ProfileMs map[string]float64 `json:"profile_ms,omitempty"`
}

// BenchReport is the JSON document of a benchmark.
type BenchReport struct {
	Command     string      `json:"command"`
	Device      string      `json:"device"`
	Model       string      `json:"model"`
	Weights     string      `json:"weights"`
	DMC         *dmc.Config `json:"dmc,omitempty"` // the settings of the dmc and forced rows
	CopyTBps    float64     `json:"copy_TBps"`
	Rows        []BenchRow  `json:"rows"`
	GeneratedAt string      `json:"generated_at"`
}

// benchPlan is what a benchmark runs: the model and one engine setting per --cr entry.
type benchPlan struct {
	cfg     model.Config
	w       *model.Weights // nil with random weights
	weights string
	dmc     *dmc.Config // the model's DMC block, or the reference defaults
	crs     []BenchCR
	opts    []kernels.Options
	prompts [][]int // from BenchOptions.Data; nil: random tokens
}

// planBench resolves the model and the engine options of every setting; the dmc and forced
// settings use the model's own DMC block (an export's) when it has one.
func planBench(o BenchOptions) (*benchPlan, error) {
	crs, err := ParseCRList(o.CR)
	if err != nil {
		return nil, err
	}
	p := &benchPlan{crs: crs, weights: "random bf16 (seed " + strconv.FormatUint(o.Seed, 10) + ")"}
	var dc *dmc.Config
	if c, err := model.Preset(o.Model); err == nil {
		if !o.RandomWeights {
			return nil, fmt.Errorf("%q is a preset without weights: add --random-weights, or pass a checkpoint path", o.Model)
		}
		p.cfg = c
	} else if o.RandomWeights {
		ci, err := LoadConfig(o.Model)
		if err != nil {
			return nil, err
		}
		p.cfg = ci.Config
		if ci.DMC != nil {
			dc = &ci.DMC.Config
		}
	} else {
		m, err := LoadModel(o.Model, LoadOptions{NeedTokenizer: o.Data != "", Warn: o.Warn})
		if err != nil {
			return nil, err
		}
		p.w, p.cfg, p.weights, dc = m.Weights, m.Weights.Config, m.Source, m.DMC
		if m.DMC != nil && m.Info != nil && m.Info.AchievedCR > 1 {
			for i := range crs {
				if crs[i].DMC && crs[i].ForceCR <= 1 {
					crs[i].Expect = m.Info.AchievedCR
				}
			}
		}
		if o.Data != "" {
			if p.prompts, err = promptWindows(o.Data, m, o.Prompt); err != nil {
				return nil, err
			}
		}
	}
	if o.Data != "" && p.w == nil {
		return nil, fmt.Errorf("--data prompts need a model with weights and a tokenizer, not --random-weights")
	}
	cache, _ := ChooseCache("dmc", dc)
	p.dmc = cache.DMC
	ctx := o.Prompt + o.Gen
	for _, cr := range crs {
		opt := kernels.DefaultOptions()
		if cr.DMC {
			opt = cache.Kernels(opt)
		}
		opt.ForceCR, opt.MaxContext, opt.Device = cr.ForceCR, ctx+1, o.Device
		p.opts = append(p.opts, opt)
	}
	return p, nil
}

// promptWindows cuts the documents of data (the held-out split of prepared shards when it has
// one) into windows of n tokens, at most promptWindowsMax of them.
func promptWindows(path string, m *Model, n int) ([][]int, error) {
	ds, cleanup, err := OpenEvalDataWith(path, EvalDataOptions{TokenizerPath: m.TokenizerPath, Vocab: m.Weights.Config.VocabSize})
	defer cleanup()
	if err != nil {
		return nil, fmt.Errorf("--data: %w", err)
	}
	var out [][]int
	cur := make([]int, 0, n)
	for doc, err := range ds.Documents() {
		if err != nil {
			return nil, fmt.Errorf("--data: %w", err)
		}
		for _, t := range doc {
			if cur = append(cur, int(t)); len(cur) == n {
				out, cur = append(out, cur), make([]int, 0, n)
				if len(out) == promptWindowsMax {
					return out, nil
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--data %s holds fewer than --prompt %d tokens", path, n)
	}
	return out, nil
}

// promptWindowsMax bounds the distinct prompts read from --data (larger batches repeat them).
const promptWindowsMax = 4096

// BenchDecode runs prefill then Gen greedy decode steps for each compression setting and batch
// size on the CUDA engine, and reports throughput, memory and the fraction of the HBM roofline.
func BenchDecode(o BenchOptions, progress io.Writer) (*BenchReport, error) {
	if progress == nil {
		progress = io.Discard
	}
	if o.Prompt < 1 || o.Gen < 3 {
		return nil, fmt.Errorf("--prompt must be >= 1 and --gen >= 3 (got %d, %d)", o.Prompt, o.Gen)
	}
	if _, err := ParseCRList(o.CR); err != nil {
		return nil, err
	}
	if err := kernels.Available(); err != nil {
		return nil, err
	}
	if o.Warn == nil {
		o.Warn = progress
	}
	p, err := planBench(o)
	if err != nil {
		return nil, err
	}
	ctx := o.Prompt + o.Gen
	if ctx > p.cfg.MaxSeqLen {
		return nil, fmt.Errorf("--prompt %d + --gen %d exceeds the model's context %d", o.Prompt, o.Gen, p.cfg.MaxSeqLen)
	}
	bw, err := kernels.CopyBandwidth(o.Device, int64(o.BandwidthGiB*(1<<30)))
	if err != nil {
		return nil, err
	}
	rep := &BenchReport{Command: o.Command, Model: p.cfg.Name, Weights: p.weights, DMC: p.dmc, CopyTBps: bw / 1e12,
		GeneratedAt: time.Now().UTC().Format(time.RFC3339)}
	fmt.Fprintf(progress, "copy bandwidth %.3f TB/s (read+write)\n", bw/1e12)
	vanillaTokS := map[string]float64{}
	for i, cr := range p.crs {
		opt := p.opts[i]
		fit, err := kernels.FitBatch(p.cfg, opt, cr.Slots(ctx))
		if err != nil {
			return nil, err
		}
		batches, err := ParseBatches(o.Batch, fit)
		if err != nil {
			return nil, err
		}
		for _, B := range batches {
			row, dev, err := benchOne(o, p, cr, opt, B, fit, bw, progress)
			if err != nil {
				return nil, fmt.Errorf("%s batch %d: %w", cr.Label, B, err)
			}
			rep.Device = dev
			key := strconv.Itoa(B)
			if o.Batch == "max" {
				key = "max"
			}
			if cr.Label == "vanilla" {
				vanillaTokS[key] = row.DecodeTokS
			} else if v := vanillaTokS[key]; v > 0 {
				row.SpeedupVsVanila = row.DecodeTokS / v
			}
			rep.Rows = append(rep.Rows, row)
			fmt.Fprintf(progress, "%s batch %d: %.1f tok/s, %.2f ms/step (%.0f%% of roofline)\n", cr.Label, B, row.DecodeTokS,
				row.StepMsMedian, 100*row.FracOfRoofline)
		}
	}
	return rep, nil
}

func benchOne(o BenchOptions, p *benchPlan, cr BenchCR, opt kernels.Options, B, fit int, bw float64, progress io.Writer) (BenchRow, string, error) {
	cfg := p.cfg
	opt.MaxBatch = B
	var e kernels.Engine
	var err error
	if p.w != nil {
		e, err = kernels.NewEngine(p.w, opt)
	} else {
		e, err = kernels.NewRandomEngine(cfg, o.Seed, opt)
	}
	if err != nil {
		return BenchRow{}, "", err
	}
	defer e.Close()
	rng := rand.New(rand.NewPCG(o.Seed, 77))
	prompts := make([][]int, B)
	for i := range prompts {
		if p.prompts != nil {
			prompts[i] = p.prompts[i%len(p.prompts)]
			continue
		}
		prompts[i] = make([]int, o.Prompt)
		for j := range prompts[i] {
			prompts[i][j] = 3 + rng.IntN(cfg.VocabSize-3)
		}
	}
	// Warm-up: one prompt of the same length, so that first-use costs (cuBLAS kernel loading,
	// GEMM autotuning) stay out of the prefill time.
	wids, _, _, err := e.Prefill(prompts[:1], false)
	if err != nil {
		return BenchRow{}, "", err
	}
	if err := e.Release(wids...); err != nil {
		return BenchRow{}, "", err
	}
	t0 := time.Now()
	ids, next, err := prefillReporting(e, prompts, progress)
	if err != nil {
		return BenchRow{}, "", err
	}
	prefill := time.Since(t0)
	st0, err := e.CacheStats()
	if err != nil {
		return BenchRow{}, "", err
	}
	steps := make([]float64, 0, o.Gen-1)
	start := time.Now()
	for s := 1; s < o.Gen; s++ {
		if s == 2 {
			start = time.Now() // the first step tunes the decode GEMMs for this batch size
		}
		ts := time.Now()
		if next, _, err = e.Decode(ids, next, false); err != nil {
			return BenchRow{}, "", err
		}
		if s >= 2 {
			steps = append(steps, time.Since(ts).Seconds()*1e3)
		}
	}
	decode := time.Since(start).Seconds()
	st1, err := e.CacheStats()
	if err != nil {
		return BenchRow{}, "", err
	}
	mem := e.Memory()
	g := cfg.HeadDim()
	// Slots read per step grow from st0's count (+1 for the token being added) to st1's.
	kvBytes := float64(st0.Slots+st1.Slots) / 2 * float64(g) * 2 * 2
	roof := (float64(mem.Weights) + kvBytes) / bw * 1e3
	sorted := slices.Clone(steps)
	slices.Sort(sorted)
	var sum float64
	for _, s := range steps {
		sum += s
	}
	row := BenchRow{CR: cr.Label, Forced: cr.ForceCR > 1, Batch: B, MaxBatchFits: fit, Prompt: o.Prompt, Gen: o.Gen,
		PrefillMs: prefill.Seconds() * 1e3, PrefillTokS: float64(B*o.Prompt) / prefill.Seconds(),
		DecodeTokS: float64(B*(o.Gen-2)) / decode, StepMsMedian: sorted[len(sorted)/2], StepMsMean: sum / float64(len(steps)),
		RooflineStepMs: roof, WeightBytes: mem.Weights, KVBytesPerStep: kvBytes,
		RealCR: st1.CR(), PageWaste: st1.PageWaste(), PagesUsed: st1.PagesUsed, PagesTotal: st1.PagesTotal,
		PoolUsedFrac: float64(st1.PagesUsed) / float64(st1.PagesTotal), GPUMemGiB: float64(mem.Total()) / (1 << 30),
		KVPoolGiB: float64(mem.KVPool) / (1 << 30), DMCStateGiB: float64(mem.DMCState) / (1 << 30)}
	row.FracOfRoofline = roof / row.StepMsMedian
	if pm := kernels.Profile(e); pm != nil {
		row.ProfileMs = pm
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(pm)) {
			parts = append(parts, fmt.Sprintf("%s %.3f", k, pm[k]))
		}
		fmt.Fprintf(progress, "  profile ms/step: %s\n", strings.Join(parts, ", "))
	}
	return row, e.Device(), nil
}
