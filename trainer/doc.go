// Package trainer runs DMC retrofit (and vanilla "control") training: the optimiser (AdamW),
// LR and compression-rate schedules over the three stages of dmc-spec.md §3, gradient
// accumulation and global-norm clipping, atomic checkpoints with bit-exact resume, and
// per-step metrics (JSONL) plus a human progress line.
//
// The package does not define the model. It drives anything that implements Model (the
// Gorgonia training graph of package graph, or a pure-Go fake in tests) and reads
// fixed-length token windows from anything that implements Source (package data's packer).
//
// Stages (step s counts optimiser steps from 0):
//   - stage 1 "zero-out" (ZeroOutSteps): no compression; the decision channel's
//     contribution to attention is scaled by StepContext.ZeroOut = max(0, 1 − s/(0.8·S1))
//     (1, meaning "no scaling", in every other stage); at the end the caller's
//     OnZeroOutEnd hook zeroes the W_q/W_k rows that produce it (the row layout is model
//     knowledge), and the optimiser moments of every element the hook changed are reset.
//   - stage 2 "retrofit" (RetrofitSteps): target CR(s) = 1 + (CR_t − 1)·min(1, s/S_ramp),
//     TargetAlpha = 1 − 1/CR(s).
//   - stage 3 "fine-tune" (FineTuneSteps): fixed target CR, LR cosine-decayed to
//     lr_final_frac·lr (with the default lr_schedule "stages").
//
// A control run (mode: control) uses the same steps, data and LR with DMC off throughout.
//
// Run (run.go) is the loop: micro-batches from the Source, Model.Step, gradient accumulation
// (sum, then scale by 1/grad_accum), global-norm clipping, AdamW (adamw.go), JSONL metrics in
// RUN_DIR/metrics.jsonl, a progress line with ETA, optional held-out evaluation (eval.go), and
// checkpoints (checkpoint.go) written atomically through a small FS interface (fs.go) so that
// a crash or a full disk never damages the previous checkpoint. Recipes (recipe.go) are YAML
// read strictly on top of configs/recipes/default.yaml, overridable by key=value or flags.
//
// Data parallel (comm.go): Options.Comm puts a run in a group of ranks, each with its own
// Model and Source over one run directory. grad_accum counts a step's micro-batches over all
// ranks; every rank reads them all in order and trains on its contiguous share, the noise of a
// micro-batch is keyed by its index in the step, and the loss sums and gradients are summed
// over the ranks before the update, so N ranks compute what one rank does (up to the order of
// the sums) and a checkpoint resumes on any group size. Rank 0 writes checkpoints, metrics and
// progress; a cancelled rank stops the group after the same step; a failed rank aborts the
// others' reductions. LocalGroup is the in-process group (the reference for device
// communicators; the CPU tests use it).
//
// Determinism: all randomness the trainer hands out (StepContext.Seed) is a pure function of
// (recipe seed, step, micro-batch), the optimiser's arithmetic order is fixed and the
// data position is checkpointed, so on the CPU a resumed run reproduces an uninterrupted one
// bit for bit.
//
// Error policy: the package panics only on programmer bugs (mismatched slice lengths handed to
// the optimiser). Everything that depends on user input, files or the model at run time
// (recipes, checkpoints, data exhaustion, non-finite losses, full disks, cancellation) is
// returned as an error that says what went wrong and what to do next.
package trainer
