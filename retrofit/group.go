package retrofit

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/dmc-project/dmc/kernels"
)

// A data-parallel retrofit runs one process per GPU (the CUDA layer keeps one context and one
// stream per process, as torchrun does): `dmc retrofit --gpus N` starts N copies of itself, each
// told its rank through these variables, and supervises them.
const (
	envRank   = "DMC_RANK"
	envWorld  = "DMC_WORLD"
	envNCCLID = "DMC_NCCL_ID"
)

// groupRank is this process's place in a data-parallel group (world 1: no group).
type groupRank struct {
	rank, world int
	id          kernels.NCCLUniqueID
}

// rankFromEnv reads the launcher's variables; ok is false outside a group.
func rankFromEnv() (g groupRank, ok bool, err error) {
	rs := os.Getenv(envRank)
	if rs == "" {
		return groupRank{world: 1}, false, nil
	}
	if g.rank, err = strconv.Atoi(rs); err == nil {
		g.world, err = strconv.Atoi(os.Getenv(envWorld))
	}
	if err != nil || g.world < 1 || g.rank < 0 || g.rank >= g.world {
		return g, true, fmt.Errorf("%s=%q %s=%q: not a rank of a group (these are set by dmc retrofit --gpus)", envRank, rs, envWorld, os.Getenv(envWorld))
	}
	raw, err := hex.DecodeString(os.Getenv(envNCCLID))
	if err != nil || len(raw) != len(g.id) {
		return g, true, fmt.Errorf("%s is not a %d-byte hex NCCL id", envNCCLID, len(g.id))
	}
	copy(g.id[:], raw)
	return g, true, nil
}

// InGroup reports whether this process is a rank started by RunGroup.
func InGroup() bool { return os.Getenv(envRank) != "" }

// RankLog is rank r's output file in a run directory (rank 0 writes to the terminal).
func RankLog(runDir string, r int) string {
	return filepath.Join(runDir, fmt.Sprintf("rank-%d.log", r))
}

// RunGroup trains spec on gpus GPUs of this host: it takes the run directory's lock, draws the
// NCCL id and starts gpus processes of argv (the dmc command line; rank r on GPU r), rank 0
// printing to progress and the others to RankLog. Ctrl-C reaches every rank (they stop after
// the same step and rank 0 saves); when one rank fails the others are stopped and the error
// names it.
func RunGroup(ctx context.Context, spec Spec, gpus int, argv []string, progress io.Writer) error {
	if progress == nil {
		progress = io.Discard
	}
	if gpus < 2 {
		return fmt.Errorf("--gpus %d: a group needs 2 or more GPUs (1 trains without one)", gpus)
	}
	if spec.Device != "cuda" {
		return fmt.Errorf("--gpus %d needs --device cuda", gpus)
	}
	if spec.Out == "" {
		return errors.New("no run directory: pass --out DIR")
	}
	unlock, err := lockRun(spec.Out)
	if err != nil {
		return err
	}
	defer unlock()
	id, err := kernels.NCCLGetUniqueID()
	if err != nil {
		return fmt.Errorf("--gpus %d: %w", gpus, err)
	}
	cmds := make([]*exec.Cmd, gpus)
	for r := range cmds {
		c := exec.Command(argv[0], argv[1:]...)
		c.Env = append(os.Environ(), envRank+"="+strconv.Itoa(r), envWorld+"="+strconv.Itoa(gpus), envNCCLID+"="+hex.EncodeToString(id[:]),
			"NCCL_NVLS_ENABLE=0")
		if r == 0 {
			c.Stdout, c.Stderr = progress, progress
		} else {
			f, err := os.Create(RankLog(spec.Out, r))
			if err != nil {
				return err
			}
			defer f.Close()
			c.Stdout, c.Stderr = f, f
		}
		cmds[r] = c
	}
	fmt.Fprintf(progress, "data parallel over %d GPUs: one process per GPU; ranks 1–%d write %s\n", gpus, gpus-1, RankLog(spec.Out, 1))
	return superviseRanks(ctx, cmds, spec.Out, 30*time.Second)
}

// superviseRanks starts the ranks and waits for them. A cancelled ctx sends SIGINT to each
// (they agree to stop after one step); the first rank to fail gets the others SIGTERM, then
// SIGKILL after grace.
func superviseRanks(ctx context.Context, cmds []*exec.Cmd, runDir string, grace time.Duration) error {
	for r, c := range cmds {
		if err := c.Start(); err != nil {
			for _, o := range cmds[:r] {
				o.Process.Kill()
				o.Wait()
			}
			return fmt.Errorf("start rank %d: %w", r, err)
		}
	}
	type exit struct {
		rank int
		err  error
	}
	done := make(chan exit, len(cmds))
	for r, c := range cmds {
		go func() { done <- exit{r, c.Wait()} }()
	}
	var once sync.Once
	signalAll := func(sig os.Signal, except int) {
		for r, c := range cmds {
			if r != except {
				c.Process.Signal(sig)
			}
		}
	}
	var first error
	interrupted := false
	left := len(cmds)
	var killTimer <-chan time.Time
	ctxDone := ctx.Done()
	for left > 0 {
		select {
		case <-ctxDone:
			signalAll(os.Interrupt, -1)
			ctxDone, interrupted = nil, true
		case <-killTimer:
			signalAll(syscall.SIGKILL, -1)
			killTimer = nil
		case e := <-done:
			left--
			var ee *exec.ExitError
			if interrupted && errors.As(e.err, &ee) && ee.ExitCode() == 130 {
				continue // stopped by the Ctrl-C we passed on (rank 0 saved the checkpoint)
			}
			if e.err != nil && first == nil {
				where := "its output is above"
				if e.rank > 0 {
					where = "see " + RankLog(runDir, e.rank)
				}
				first = fmt.Errorf("rank %d of %d failed (%v; %s); the other ranks were stopped", e.rank, len(cmds), e.err, where)
				once.Do(func() {
					signalAll(syscall.SIGTERM, e.rank)
					killTimer = time.After(grace)
				})
			}
		}
	}
	if first != nil {
		return first
	}
	return ctx.Err()
}
