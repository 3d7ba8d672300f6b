package cli

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/kernels"
	"github.com/dmc-project/dmc/model"
)

// BenchDecodeOptions are the flags of `dmc bench decode`.
type BenchDecodeOptions struct {
	Model         string
	RandomWeights bool
	CR            string
	Batch         string
	Prompt        int
	Gen           int
	JSON          string
	Seed          uint64
	Device        int
	BandwidthGiB  float64
}

func init() { register(newBenchCmd) }

func newBenchCmd(streams *IO) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the CUDA inference engine (decode throughput, memory, roofline)",
		Args:  cobra.NoArgs,
	}
	o := &BenchDecodeOptions{}
	dec := &cobra.Command{
		Use:   "decode",
		Short: "Decode throughput of the CUDA engine, vanilla and DMC, at given batch sizes",
		Long: `Runs prefill then --gen greedy decode steps for each compression setting and batch size, and
reports tokens/s, ms per step, GPU memory, the largest batch that fits, and the fraction of the HBM
roofline: (weight bytes + KV bytes read per step) / measured device copy bandwidth.

--cr takes a list of: 1 or vanilla (the unmodified model), dmc (the model's learned DMC
decisions), or an integer N > 1: DMC with the merge pattern FORCED to compression N (for random
weights; reported as "forced").`,
		Example: `  dmc bench decode --model llama2-7b --random-weights --cr 1 --batch 1,16,64 --prompt 512 --gen 128
  dmc bench decode --model llama2-7b --random-weights --cr 1,2,4,8 --batch max --prompt 3968 --gen 128 --json out.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.Run(streams) },
	}
	f := dec.Flags()
	f.StringVar(&o.Model, "model", "", "model preset (e.g. llama2-7b, tiny-1b-gqa) or checkpoint path (required)")
	f.BoolVar(&o.RandomWeights, "random-weights", false, "draw random bf16 weights on the GPU (needed for presets)")
	f.StringVar(&o.CR, "cr", "1", "comma-separated compression settings: 1|vanilla, dmc, or N>1 (forced)")
	f.StringVar(&o.Batch, "batch", "1", "comma-separated batch sizes, or max (the largest batch that fits)")
	f.IntVar(&o.Prompt, "prompt", 512, "prompt tokens per sequence")
	f.IntVar(&o.Gen, "gen", 128, "generated tokens per sequence")
	f.StringVar(&o.JSON, "json", "", "also write the results as JSON to this file")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the random weights and prompts")
	f.IntVar(&o.Device, "device", 0, "GPU ordinal")
	f.Float64Var(&o.BandwidthGiB, "bandwidth-gib", 2, "size of the device copy that measures the bandwidth ceiling")
	_ = dec.MarkFlagRequired("model")
	cmd.AddCommand(dec)
	return cmd
}

// benchCR is one compression setting.
type benchCR struct {
	Label   string // "vanilla", "dmc", "forced-4"
	DMC     bool
	ForceCR int
}

func parseCRList(s string) ([]benchCR, error) {
	var out []benchCR
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "1" || f == "vanilla":
			out = append(out, benchCR{Label: "vanilla"})
		case f == "dmc":
			out = append(out, benchCR{Label: "dmc", DMC: true})
		default:
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("--cr %q: each entry must be 1, vanilla, dmc, or an integer N > 1", f)
			}
			out = append(out, benchCR{Label: fmt.Sprintf("forced-%d", n), DMC: true, ForceCR: n})
		}
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

// BenchReport is the JSON document of a run.
type BenchReport struct {
	Command     string     `json:"command"`
	Device      string     `json:"device"`
	Model       string     `json:"model"`
	Weights     string     `json:"weights"`
	CopyTBps    float64    `json:"copy_TBps"`
	Rows        []BenchRow `json:"rows"`
	GeneratedAt string     `json:"generated_at"`
}

// Run executes the benchmark.
func (o *BenchDecodeOptions) Run(streams *IO) error {
	if o.Prompt < 1 || o.Gen < 3 {
		return fmt.Errorf("--prompt must be >= 1 and --gen >= 3 (got %d, %d)", o.Prompt, o.Gen)
	}
	crs, err := parseCRList(o.CR)
	if err != nil {
		return err
	}
	if err := kernels.Available(); err != nil {
		return err
	}
	var cfg model.Config
	var w *model.Weights
	weights := "random bf16 (seed " + strconv.FormatUint(o.Seed, 10) + ")"
	if c, err := model.Preset(o.Model); err == nil {
		if !o.RandomWeights {
			return fmt.Errorf("%q is a preset without weights: add --random-weights, or pass a checkpoint path", o.Model)
		}
		cfg = c
	} else if o.RandomWeights {
		if cfg, _, err = checkpoints.LoadConfig(o.Model); err != nil {
			return err
		}
	} else {
		var src string
		if w, src, err = checkpoints.Load(o.Model); err != nil {
			return err
		}
		cfg, weights = w.Config, src
	}
	ctx := o.Prompt + o.Gen
	if ctx > cfg.MaxSeqLen {
		return fmt.Errorf("--prompt %d + --gen %d exceeds the model's context %d", o.Prompt, o.Gen, cfg.MaxSeqLen)
	}
	bw, err := kernels.CopyBandwidth(o.Device, int64(o.BandwidthGiB*(1<<30)))
	if err != nil {
		return err
	}
	rep := BenchReport{Command: "dmc bench decode " + strings.Join(os.Args[min(len(os.Args), 3):], " "), Model: cfg.Name,
		Weights: weights, CopyTBps: bw / 1e12, GeneratedAt: time.Now().UTC().Format(time.RFC3339)}
	fmt.Fprintf(streams.Err, "copy bandwidth %.3f TB/s (read+write)\n", bw/1e12)
	vanillaTokS := map[string]float64{}
	for _, cr := range crs {
		opt := kernels.DefaultOptions()
		opt.DMC, opt.ForceCR, opt.MaxContext, opt.Device = cr.DMC, cr.ForceCR, ctx+1, o.Device
		slots := ctx
		if cr.ForceCR > 1 {
			slots = (ctx+cr.ForceCR-1)/cr.ForceCR + 1
		}
		fit, err := kernels.FitBatch(cfg, opt, slots)
		if err != nil {
			return err
		}
		batches, err := parseBatches(o.Batch, fit)
		if err != nil {
			return err
		}
		for _, B := range batches {
			row, dev, err := o.runOne(cfg, w, cr, opt, B, fit, bw, streams)
			if err != nil {
				return fmt.Errorf("%s batch %d: %w", cr.Label, B, err)
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
			fmt.Fprintf(streams.Err, "%s batch %d: %.1f tok/s, %.2f ms/step (%.0f%% of roofline)\n", cr.Label, B, row.DecodeTokS,
				row.StepMsMedian, 100*row.FracOfRoofline)
		}
	}
	printBenchTable(streams, &rep)
	if o.JSON != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.JSON, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func parseBatches(s string, fit int) ([]int, error) {
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

func (o *BenchDecodeOptions) runOne(cfg model.Config, w *model.Weights, cr benchCR, opt kernels.Options, B, fit int, bw float64,
	streams *IO) (BenchRow, string, error) {
	opt.MaxBatch = B
	var e kernels.Engine
	var err error
	if w != nil {
		e, err = kernels.NewEngine(w, opt)
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
	ids, next, _, err := e.Prefill(prompts, false)
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
	if p := kernels.Profile(e); p != nil {
		row.ProfileMs = p
		keys := slices.Sorted(maps.Keys(p))
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s %.3f", k, p[k]))
		}
		fmt.Fprintf(streams.Err, "  profile ms/step: %s\n", strings.Join(parts, ", "))
	}
	return row, e.Device(), nil
}

func printBenchTable(streams *IO, rep *BenchReport) {
	fmt.Fprintf(streams.Out, "device: %s\nmodel: %s, weights: %s; copy bandwidth %.3f TB/s\n", rep.Device, rep.Model, rep.Weights, rep.CopyTBps)
	tw := tabwriter.NewWriter(streams.Out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cr\tbatch\tfits\tprefill ms\tdecode tok/s\tms/step\troofline ms\t% roofline\treal CR\tpage waste\tGPU GiB\tvs vanilla\t")
	for _, r := range rep.Rows {
		vs := "-"
		if r.SpeedupVsVanila > 0 {
			vs = fmt.Sprintf("%.2fx", r.SpeedupVsVanila)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.1f\t%.2f\t%.2f\t%.1f\t%.2f\t%.1f%%\t%.1f\t%s\t\n", r.CR, r.Batch, r.MaxBatchFits, r.PrefillMs,
			r.DecodeTokS, r.StepMsMedian, r.RooflineStepMs, 100*r.FracOfRoofline, r.RealCR, 100*r.PageWaste, r.GPUMemGiB, vs)
	}
	tw.Flush()
	if slices.ContainsFunc(rep.Rows, func(r BenchRow) bool { return r.Forced }) {
		fmt.Fprintln(streams.Out, "forced-N rows: DMC merge pattern forced to compression N (random weights), not learned decisions")
	}
}
