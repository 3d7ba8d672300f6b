package retrofit

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/data"
	"github.com/dmc-project/dmc/eval"
	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/model"
)

// ExportOptions refine Export.
type ExportOptions struct {
	DType     string // bf16 (default), fp16 or fp32
	Measure   string // held-out data to measure the achieved CR on (default: the run's heldout.json)
	Tokenizer string // tokenizer to ship (default: the run's)
	ShardMB   int64  // largest safetensors shard in MB (default 5000)
	Force     bool   // overwrite a directory that is not an export of this run
	Warn      io.Writer
	// CalibrateCR moves the decision offset to where the hard decisions compress held-out
	// text (Measure, else the run's held-out data) by the target CR (CalibrateOffset), on
	// CalibrateTokens tokens (default 32768) on Device (cpu or cuda). The export then records
	// the trained offset and the CR measured at the new one.
	CalibrateCR     bool
	CalibrateTokens int
	Device          string
	Progress        io.Writer // calibration measurements; nil discards them
}

// ExportMarker is the file in an export that names the run it came from, so a later export
// of another run into the same directory is refused without Force.
const ExportMarker = "dmc-export.json"

type exportMarker struct {
	Run        string `json:"run"`
	Checkpoint string `json:"checkpoint"`
	Step       int    `json:"step"`
}

// checkExportTarget refuses to write into out when it holds anything but an earlier export of
// the same run (unless force).
func checkExportTarget(out, runDir string, force bool) error {
	ents, err := os.ReadDir(out)
	if err != nil || len(ents) == 0 || force {
		return nil
	}
	absRun, _ := filepath.Abs(runDir)
	var m exportMarker
	b, err := os.ReadFile(filepath.Join(out, ExportMarker))
	if err == nil && json.Unmarshal(b, &m) == nil {
		if m.Run == absRun {
			return nil
		}
		return fmt.Errorf("%s holds the export of another run (%s): choose another --out, or pass --force to replace it", out, m.Run)
	}
	return fmt.Errorf("%s already exists and is not an export of %s: choose another --out, or pass --force to write into it", out, runDir)
}

// calibrateExport sets d's decision offset by CalibrateOffset on the run's held-out data (or
// opt.Measure) and returns the evaluation at the new offset.
func calibrateExport(ctx context.Context, rd *RunDir, w *model.Weights, d *checkpoints.DMCInfo, opt ExportOptions) (*eval.PPLResult, error) {
	path, split := opt.Measure, splitOf(opt.Measure, "heldout")
	if path == "" && rd.Spec != nil {
		m, _ := data.ReadManifest(rd.Spec.Data)
		path = heldoutOf(*rd.Spec, m) // names its split itself (DATA:heldout)
	}
	if path == "" {
		return nil, fmt.Errorf("--calibrate-cr measures the compression on held-out text: pass --measure DATA (the run has no held-out data)")
	}
	if !(d.TargetCR > 1) {
		return nil, fmt.Errorf("--calibrate-cr: the run has no target CR above 1 (%g) to calibrate to", d.TargetCR)
	}
	ds, err := data.OpenWith(path, data.OpenOptions{Split: split})
	if err != nil {
		return nil, err
	}
	tokens := opt.CalibrateTokens
	if tokens <= 0 {
		tokens = 32768
	}
	progress := opt.Progress
	if progress == nil {
		progress = io.Discard
	}
	fmt.Fprintf(progress, "calibrating the decision offset (trained: %g) to CR %g on %d tokens of %s\n", d.DecisionOffset, d.TargetCR, tokens, path)
	// The run's own (checkpoint-layout) config: d's channel is remapped for the export.
	c, r, err := CalibrateOffset(ctx, w, *rd.Model.DMC, ds.Documents, d.TargetCR, CalibrateOptions{PPL: eval.PPLOptions{MaxTokens: tokens},
		Device: cmp.Or(opt.Device, "cpu"), Batch: heldoutBatch, Progress: progress})
	if err != nil {
		return nil, err
	}
	trained := d.DecisionOffset
	d.TrainedDecisionOffset, d.DecisionOffset = &trained, c.DecisionOffset
	fmt.Fprintf(progress, "decision offset %g → %g: real CR %.3f (target %g), perplexity %.4f on %d tokens\n",
		trained, c.DecisionOffset, r.CR, d.TargetCR, r.PPL, r.Tokens)
	return r, nil
}

// ExportResult says what Export wrote.
type ExportResult struct {
	Checkpoint string // the run's checkpoint exported
	Step       int
	Tokenizer  string // the tokenizer shipped ("" when none)
	DMC        *checkpoints.DMCInfo
}

// Export writes the latest checkpoint of runDir as a Hugging Face-style directory: config.json
// with a "dmc" block (the run's dmc.Config in the rotate-half layout, target and achieved CR),
// safetensors weights and the tokenizer.
func Export(ctx context.Context, runDir, out string, opt ExportOptions) (*ExportResult, error) {
	if opt.Warn == nil {
		opt.Warn = io.Discard
	}
	if opt.DType == "" {
		opt.DType = "bf16"
	}
	if opt.ShardMB <= 0 {
		opt.ShardMB = 5000
	}
	rd, err := OpenRun(runDir)
	if err != nil {
		return nil, err
	}
	if err := checkExportTarget(out, runDir, opt.Force); err != nil {
		return nil, err
	}
	w, ck, err := rd.latest(opt.Warn)
	if err != nil {
		return nil, err
	}
	info := rd.Model
	res := &ExportResult{Checkpoint: ck.Name, Step: ck.State.Step, Tokenizer: opt.Tokenizer}
	if res.Tokenizer == "" {
		res.Tokenizer = info.Tokenizer
	}
	var extra map[string]any
	if info.DMC != nil {
		d := &checkpoints.DMCInfo{Config: *info.DMC, TargetCR: info.TargetCR, TrainedSteps: ck.State.Step}
		// WriteHF stores the rotate-half layout; the decision channel moves with its rows.
		D := w.Config.HeadDim()
		d.DecisionChannel = checkpoints.RoPEChannel(info.DMC.Channel(D), D, w.Config.RoPE, model.RoPEHalf)
		var measured *eval.PPLResult
		if opt.CalibrateCR {
			if measured, err = calibrateExport(ctx, rd, w, d, opt); err != nil {
				return nil, err
			}
		} else if opt.Measure != "" {
			ds, err := data.OpenWith(opt.Measure, data.OpenOptions{Split: splitOf(opt.Measure, "heldout")})
			if err != nil {
				return nil, err
			}
			if measured, err = eval.Perplexity(ctx, w, eval.DMCCaches(w.Config, *info.DMC), ds.Documents(), eval.PPLOptions{}); err != nil {
				return nil, err
			}
		} else if b, err := os.ReadFile(filepath.Join(runDir, HeldoutFile)); err == nil {
			measured = &eval.PPLResult{}
			if json.Unmarshal(b, measured) != nil {
				measured = nil
			}
		}
		if measured != nil {
			d.AchievedCR, d.AchievedByLayer, d.AchievedByHead = measured.CR, measured.CRPerLayer, measured.CRPerHead
		} else {
			fmt.Fprintln(opt.Warn, "note: achieved CR not recorded (no heldout.json in the run); pass --measure DATA to measure it")
		}
		extra = map[string]any{"dmc": d.ConfigBlock()}
		res.DMC = d
	}
	if err := checkpoints.WriteHF(out, w, opt.DType, extra, opt.ShardMB*1_000_000); err != nil {
		return nil, err
	}
	absRun, _ := filepath.Abs(runDir)
	mb, _ := json.MarshalIndent(exportMarker{Run: absRun, Checkpoint: ck.Name, Step: ck.State.Step}, "", "  ")
	if err := atomicfile.Write(filepath.Join(out, ExportMarker), append(mb, '\n')); err != nil {
		return nil, err
	}
	if res.Tokenizer != "" {
		if err := atomicfile.Copy(res.Tokenizer, filepath.Join(out, tokenizerFileName(res.Tokenizer))); err != nil {
			return nil, fmt.Errorf("copy the tokenizer: %w", err)
		}
		// The Hugging Face layout too (tokenizer.model + tokenizer_config.json), so that
		// AutoTokenizer.from_pretrained loads the export.
		if _, err := WriteHFTokenizer(out, res.Tokenizer, w.Config.MaxSeqLen); err != nil {
			fmt.Fprintf(opt.Warn, "note: no Hugging Face tokenizer files in the export: %v\n", err)
		}
	} else {
		fmt.Fprintln(opt.Warn, "note: the run records no tokenizer; pass --tokenizer to ship one with the export")
	}
	return res, nil
}

// tokenizerFileName is the name a tokenizer gets inside an export, where tokenizer.Find looks.
func tokenizerFileName(src string) string {
	if filepath.Ext(src) == ".model" {
		return "tokenizer.model"
	}
	return "tokenizer.bin"
}
