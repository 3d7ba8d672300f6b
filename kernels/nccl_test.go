//go:build dmc_cuda

package kernels

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func ncclOrSkip(t *testing.T) {
	t.Helper()
	if _, err := NCCLVersion(); err != nil {
		t.Skipf("no NCCL: %v", err)
	}
}

// ncclCheckCollectives runs each collective on rank of size over buffers whose values are
// (rank+1)·(i+1) and checks what comes back.
func ncclCheckCollectives(t *testing.T, dev *TrainDevice, c *NCCLComm) {
	t.Helper()
	rank, size := c.Rank(), c.Size()
	const n = 1<<20 + 3 // not a multiple of anything NCCL chunks by
	tri := float32(size * (size + 1) / 2)
	host := make([]float32, n)
	for i := range host {
		host[i] = float32((rank + 1) * (i%97 + 1))
	}
	buf, err := dev.FromF32(host)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Free()
	if err := c.AllReduceSum(buf); err != nil {
		t.Fatal(err)
	}
	got, err := buf.F32s()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if want := tri * float32(i%97+1); v != want {
			t.Fatalf("rank %d: all-reduce[%d] = %v, want %v", rank, i, v, want)
		}
	}

	// bf16, in a group with a second f32 buffer (the bucketed gradient path).
	bh := make([]uint16, 4096)
	for i := range bh {
		bh[i] = toBF16(float32(rank + 1))
	}
	bb, err := dev.Alloc(BF16, len(bh))
	if err != nil {
		t.Fatal(err)
	}
	defer bb.Free()
	if err := bb.Upload(bh); err != nil {
		t.Fatal(err)
	}
	small, err := dev.FromF32([]float32{float32(rank), 1})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Free()
	if err := c.Group(func() error {
		if err := c.AllReduceSum(bb); err != nil {
			return err
		}
		return c.AllReduceSum(small)
	}); err != nil {
		t.Fatal(err)
	}
	if err := bb.Download(bh); err != nil {
		t.Fatal(err)
	}
	for i, v := range bh {
		if got := fromBF16(v); got != tri {
			t.Fatalf("rank %d: bf16 all-reduce[%d] = %v, want %v", rank, i, got, tri)
		}
	}
	if s, _ := small.F32s(); s[0] != float32(size*(size-1)/2) || s[1] != float32(size) {
		t.Fatalf("rank %d: grouped all-reduce %v", rank, s)
	}

	// Reduce-scatter then all-gather gives back the all-reduce (ZeRO-1's pair).
	const part = 1000
	send, err := dev.FromF32(host[:part*size])
	if err != nil {
		t.Fatal(err)
	}
	defer send.Free()
	recv, err := dev.Alloc(F32, part)
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Free()
	if err := c.ReduceScatterSum(send, recv); err != nil {
		t.Fatal(err)
	}
	all, err := dev.Alloc(F32, part*size)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Free()
	if err := c.AllGather(recv, all); err != nil {
		t.Fatal(err)
	}
	ga, _ := all.F32s()
	for i, v := range ga {
		if want := tri * float32(i%97+1); v != want {
			t.Fatalf("rank %d: reduce-scatter + all-gather[%d] = %v, want %v", rank, i, v, want)
		}
	}
	if err := c.ReduceScatterSum(send, small); err == nil { // recv must hold len(send)/size
		t.Fatal("reduce-scatter into a buffer of the wrong size was accepted")
	}
}

func TestNCCLOneRank(t *testing.T) {
	ncclOrSkip(t)
	dev, err := OpenTrain(0)
	if err != nil {
		t.Skipf("no usable GPU: %v", err)
	}
	id, err := NCCLGetUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	c, err := dev.NCCLInit(id, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := os.Getenv("NCCL_NVLS_ENABLE"); v != "0" {
		t.Fatalf("NCCL_NVLS_ENABLE = %q after loading NCCL, want 0", v)
	}
	ncclCheckCollectives(t, dev, c)
	if _, err := dev.NCCLInit(id, 2, 2); err == nil {
		t.Fatal("rank 2 of 2 was accepted")
	}
}

// One process per GPU, as the trainer runs them: the test binary starts itself once per rank.
func TestNCCLRanksSum(t *testing.T) {
	if r := os.Getenv("DMC_NCCL_RANK"); r != "" {
		ncclChild(t, r)
		return
	}
	ncclOrSkip(t)
	out, err := exec.Command("nvidia-smi", "-L").Output()
	gpus := strings.Count(string(out), "GPU ")
	if err != nil || gpus < 2 {
		t.Skipf("needs 2 or more GPUs (nvidia-smi -L: %d, %v)", gpus, err)
	}
	id, err := NCCLGetUniqueID()
	if err != nil {
		t.Fatal(err)
	}
	cmds := make([]*exec.Cmd, gpus)
	outs := make([]strings.Builder, gpus)
	for r := range cmds {
		cmds[r] = exec.Command(os.Args[0], "-test.run", "^TestNCCLRanksSum$", "-test.v")
		cmds[r].Env = append(os.Environ(), "DMC_NCCL_RANK="+strconv.Itoa(r), "DMC_NCCL_SIZE="+strconv.Itoa(gpus),
			"DMC_NCCL_ID="+hex.EncodeToString(id[:]))
		cmds[r].Stdout, cmds[r].Stderr = &outs[r], &outs[r]
		if err := cmds[r].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for r, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("rank %d of %d: %v\n%s", r, gpus, err, outs[r].String())
		}
	}
}

func ncclChild(t *testing.T, rankS string) {
	rank, _ := strconv.Atoi(rankS)
	size, _ := strconv.Atoi(os.Getenv("DMC_NCCL_SIZE"))
	raw, err := hex.DecodeString(os.Getenv("DMC_NCCL_ID"))
	var id NCCLUniqueID
	if err != nil || len(raw) != len(id) {
		t.Fatalf("bad DMC_NCCL_ID: %v", err)
	}
	copy(id[:], raw)
	dev, err := OpenTrain(rank)
	if err != nil {
		t.Fatalf("rank %d: %v", rank, err)
	}
	c, err := dev.NCCLInit(id, rank, size)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ncclCheckCollectives(t, dev, c)
	fmt.Printf("rank %d of %d: collectives correct\n", rank, size)
}
