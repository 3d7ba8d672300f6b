package retrofit

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func shells(scripts ...string) []*exec.Cmd {
	var cmds []*exec.Cmd
	for _, s := range scripts {
		cmds = append(cmds, exec.Command("sh", "-c", s))
	}
	return cmds
}

func TestSuperviseRanks(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	const grace = 300 * time.Millisecond
	cases := []struct {
		name    string
		scripts []string
		cancel  bool
		want    string // "" = success
		within  time.Duration
	}{
		{"all finish", []string{"exit 0", "sleep 0.1", "exit 0"}, false, "", 5 * time.Second},
		{"one fails, the others are stopped", []string{"sleep 30", "exit 3", "sleep 30"}, false, "rank 1 of 3 failed (exit status 3; see RUN/rank-1.log)", 5 * time.Second},
		{"rank 0 fails", []string{"exit 2", "sleep 30"}, false, "rank 0 of 2 failed (exit status 2; its output is above)", 5 * time.Second},
		{"a rank that ignores SIGTERM is killed after the grace", []string{"trap '' TERM; sleep 30", "exit 1"}, false, "rank 1 of 2 failed", 5 * time.Second},
		{"Ctrl-C reaches every rank", []string{"trap 'exit 130' INT; sleep 30 & wait", "trap 'exit 130' INT; sleep 30 & wait"}, true, "context canceled", 5 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if c.cancel {
				time.AfterFunc(200*time.Millisecond, cancel)
			}
			start := time.Now()
			err := superviseRanks(ctx, shells(c.scripts...), "RUN", grace)
			if took := time.Since(start); took > c.within {
				t.Fatalf("took %v", took)
			}
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("want success, got %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if c.cancel && !errors.Is(err, context.Canceled) {
				t.Fatalf("an interrupted group should report the cancel only, got %v", err)
			}
		})
	}
}

func TestRankFromEnv(t *testing.T) {
	id := strings.Repeat("ab", 128)
	cases := []struct {
		rank, world, nccl string
		wantRank, wantW   int
		in                bool
		err               string
	}{
		{"", "", "", 0, 1, false, ""},
		{"1", "4", id, 1, 4, true, ""},
		{"4", "4", id, 0, 0, true, "not a rank of a group"},
		{"x", "4", id, 0, 0, true, "not a rank of a group"},
		{"0", "2", "zz", 0, 0, true, "DMC_NCCL_ID is not a 128-byte hex NCCL id"},
	}
	for _, c := range cases {
		t.Setenv(envRank, c.rank)
		t.Setenv(envWorld, c.world)
		t.Setenv(envNCCLID, c.nccl)
		g, in, err := rankFromEnv()
		if in != c.in || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Fatalf("%+v: in %v err %v", c, in, err)
		}
		if err == nil && (g.rank != c.wantRank || g.world != c.wantW) {
			t.Fatalf("%+v: rank %d of %d", c, g.rank, g.world)
		}
		if InGroup() != (c.rank != "") {
			t.Fatalf("%+v: InGroup %v", c, InGroup())
		}
	}
}

func TestRunGroupRefusesBadRequests(t *testing.T) {
	for _, c := range []struct {
		gpus   int
		device string
		want   string
	}{
		{1, "cuda", "a group needs 2 or more GPUs"},
		{2, "cpu", "--gpus 2 needs --device cuda"},
	} {
		err := RunGroup(context.Background(), Spec{Device: c.device, Out: t.TempDir()}, c.gpus, []string{"dmc"}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("--gpus %d --device %s: %v", c.gpus, c.device, err)
		}
	}
}
