package cli

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/dmc-project/dmc/model"
	"github.com/dmc-project/dmc/retrofit"
)

// RetrofitOptions are the flags of `dmc retrofit`.
type RetrofitOptions struct {
	Model     string
	Weights   string
	Tokenizer string
	Data      string
	Heldout   string
	Out       string
	Config    string
	TargetCR  float64
	Steps     int
	Resume    bool
	Control   bool
	Init      string
	Set       []string
	StopAfter int
	Device    string
	GEMM      string
	Recompute bool
	GPUs      int // data parallel over this many GPUs of the host (one process each)
	// HeldoutTokens limits the final held-out evaluation.
	HeldoutTokens int
	// StepsGiven and TargetCRGiven say whether --steps and --target-cr were on the command
	// line (an explicit --target-cr 0 is refused; --steps with --resume extends a run).
	StepsGiven, TargetCRGiven bool
}

func init() { register(newRetrofitCmd) }

func newRetrofitCmd(streams *IO) *cobra.Command {
	o := &RetrofitOptions{}
	cmd := &cobra.Command{
		Use:   "retrofit",
		Short: "Retrofit a Llama checkpoint with DMC by continued training (or run the vanilla control)",
		Long: `Continues pre-training a Llama model so that every layer and KV head learns when to merge
new keys/values into the last cache slot (Dynamic Memory Compression). Stages follow the
reference: zero-out of the decision channel, a linear ramp of the target compression rate,
then fine-tuning at the target. Checkpoints are written atomically every checkpoint_every
steps and on Ctrl-C; --resume continues bit-exactly.`,
		Example: `  dmc retrofit --model stories260K.bin --data shards/ --target-cr 2 --steps 400 --out runs/cr2
  dmc retrofit --model llama2-7b --weights /models/Llama-2-7b-hf --data shards/ --target-cr 4 --out runs/7b-cr4
  dmc retrofit --out runs/cr2 --resume
  dmc retrofit --model stories260K.bin --data shards/ --target-cr 4 --device cuda --out runs/cr4-gpu
  dmc retrofit --model llama2-7b --data shards/ --target-cr 2 --device cuda --gpus 8 --set grad_accum=8 --out runs/7b-cr2
  dmc retrofit --model stories260K.bin --data shards/ --control --steps 400 --out runs/control
  dmc retrofit --model configs/models/bench-20m.yaml --init random --control --config demo-pretrain --data shards/ --out runs/base`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop, caught := signalContext(cmd.Context())
			defer stop()
			o.StepsGiven, o.TargetCRGiven = cmd.Flags().Changed("steps"), cmd.Flags().Changed("target-cr")
			res, err := o.Run(ctx, streams)
			if err == nil && res == nil { // a group's launcher: the ranks reported
				if sig := caught(); sig != nil {
					return interrupted(sig, fmt.Sprintf("interrupted: continue with: dmc retrofit --out %s --resume --gpus %d", o.Out, o.GPUs))
				}
				return nil
			}
			if err == nil && res.Run.Interrupted {
				return interrupted(caught(), fmt.Sprintf("interrupted: saved %s; continue with: dmc retrofit --out %s --resume", res.Run.Checkpoint, o.Out))
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "checkpoint path, hub id, or preset name ("+fmt.Sprint(model.PresetNames())+")")
	f.StringVar(&o.Weights, "weights", "", "weights for a preset (directory or file); default: $DMC_WEIGHTS, then the Hugging Face cache")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer of the data (default: from the shards' manifest, or next to the model)")
	f.StringVar(&o.Data, "data", "", "training shards (dmc data prepare output, Arrow or HF dataset)")
	f.StringVar(&o.Heldout, "heldout", "", "held-out data for the final perplexity (default: the heldout split of --data when present)")
	f.StringVar(&o.Out, "out", "", "run directory for checkpoints, metrics and the resolved recipe (required)")
	f.StringVar(&o.Config, "config", "", "recipe: a YAML file or an embedded recipe name (default: default)")
	f.Float64Var(&o.TargetCR, "target-cr", 0, "target compression rate (≥ 1; overrides the recipe)")
	f.IntVar(&o.Steps, "steps", 0, "total optimiser steps; the recipe's stage lengths are scaled to sum to it")
	f.BoolVar(&o.Resume, "resume", false, "continue the run in --out from its latest checkpoint")
	f.BoolVar(&o.Control, "control", false, "plain continued training with the same steps and data, no DMC (the control run)")
	f.StringVar(&o.Init, "init", "weights", "weights: start from --model's weights; random: a random initialisation of --model's architecture (preset, YAML model config or checkpoint), to pre-train from scratch with --control --config demo-pretrain")
	f.StringArrayVar(&o.Set, "set", nil, "override a recipe field, e.g. --set lr=1e-4 (repeatable)")
	f.IntVar(&o.HeldoutTokens, "heldout-tokens", 0, "stop the final held-out evaluation after about this many tokens (0 = all)")
	f.IntVar(&o.StopAfter, "stop-after", 0, "stop (with a checkpoint) after this many steps in total; resume later")
	f.StringVar(&o.Device, "device", "cpu", "train on cpu or cuda (GPU 0; needs the dmc_cuda build); a run can resume on either")
	f.IntVar(&o.GPUs, "gpus", 1, "with --device cuda: data parallel over this many GPUs of this host, one process per GPU (grad_accum counts micro-batches over all of them; resumable on any count)")
	f.BoolVar(&o.Recompute, "recompute", false, "GPU: recompute each layer's activations in the backward (less memory, ~1/3 more compute, same results)")
	f.StringVar(&o.GEMM, "gemm", "bf16", "GPU GEMM operands: bf16 (fp32 accumulation) or fp32 (exact, slower: parity checks with the CPU)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// Run trains and prints the outcome.
func (o *RetrofitOptions) Run(ctx context.Context, streams *IO) (*retrofit.Result, error) {
	if o.TargetCRGiven && !(o.TargetCR >= 1) {
		return nil, fmt.Errorf("--target-cr must be ≥ 1 and finite (1 = no compression, 2 = half the KV cache), got %g", o.TargetCR)
	}
	if o.Device != "cpu" && o.Device != "cuda" {
		return nil, fmt.Errorf("unknown --device %q: use cpu or cuda", o.Device)
	}
	if o.GEMM != "bf16" && o.GEMM != "fp32" {
		return nil, fmt.Errorf("unknown --gemm %q: use bf16 or fp32", o.GEMM)
	}
	if o.GPUs < 1 {
		return nil, fmt.Errorf("--gpus must be ≥ 1, got %d", o.GPUs)
	}
	if o.GPUs > 1 && o.Device != "cuda" {
		return nil, fmt.Errorf("--gpus %d needs --device cuda (one process per GPU)", o.GPUs)
	}
	prog := newProgressLine(streams.Err, "held-out tokens")
	spec := retrofit.Spec{Model: o.Model, Weights: o.Weights, Tokenizer: o.Tokenizer, Data: o.Data,
		Heldout: o.Heldout, Config: o.Config, TargetCR: o.TargetCR, Steps: o.Steps, Control: o.Control, Init: o.Init, Set: o.Set,
		Out: o.Out, Resume: o.Resume, StopAfter: o.StopAfter, HeldoutTokens: o.HeldoutTokens, HeldoutProgress: prog.update, Device: o.Device, GEMM: o.GEMM, Recompute: o.Recompute}
	// Everything that can be checked without loading weights is checked before any work.
	if err := retrofit.CheckSpec(spec); err != nil {
		return nil, err
	}
	spec, err := retrofit.ResumeSpec(spec, o.StepsGiven)
	if err != nil {
		return nil, err
	}
	if err := retrofit.Preflight(spec); err != nil {
		return nil, err
	}
	if o.GPUs > 1 && !retrofit.InGroup() {
		// The launcher: the ranks are copies of this command, each on its GPU.
		if err := retrofit.RunGroup(ctx, spec, o.GPUs, os.Args, streams.Err); err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
		return nil, nil
	}
	res, err := retrofit.Run(ctx, spec, streams.Err)
	prog.done()
	if err != nil {
		return res, err
	}
	if r := res.Heldout; r != nil {
		fmt.Fprintf(streams.Out, "held-out perplexity %.4f over %d tokens, real compression %.2fx (%s cache)\n", r.PPL, r.Tokens, r.CR, res.Cache)
		if note := res.CRNote(); note != "" {
			fmt.Fprintln(streams.Err, note)
		}
	}
	return res, nil
}
