package trainer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// faultFS wraps OSFS and fails on demand: failAt > 0 fails the failAt-th mutating operation
// (create, write, sync, close, rename, mkdir, remove, dir sync) with EIO, and budget ≥ 0 is
// the number of bytes that can still be written before writes fail with ENOSPC (a full disk).
type faultFS struct {
	OSFS
	ops    int
	failAt int
	budget int64
	log    []string
}

func newFaultFS() *faultFS { return &faultFS{budget: -1} }

func (f *faultFS) op(what string) error {
	f.ops++
	f.log = append(f.log, what)
	if f.failAt > 0 && f.ops == f.failAt {
		return fmt.Errorf("injected fault in %s: %w", what, syscall.EIO)
	}
	return nil
}

type faultFile struct {
	fs *faultFS
	WriteFile
}

func (w faultFile) Write(p []byte) (int, error) {
	if err := w.fs.op("write"); err != nil {
		return 0, err
	}
	if w.fs.budget >= 0 && int64(len(p)) > w.fs.budget {
		n, _ := w.WriteFile.Write(p[:w.fs.budget])
		w.fs.budget = 0
		return n, &os.PathError{Op: "write", Path: "checkpoint file", Err: syscall.ENOSPC}
	}
	if w.fs.budget >= 0 {
		w.fs.budget -= int64(len(p))
	}
	return w.WriteFile.Write(p)
}

func (w faultFile) Sync() error {
	if err := w.fs.op("sync"); err != nil {
		return err
	}
	return nil // durability is not observable in a test; skipping the real fsync keeps it fast
}

func (w faultFile) Close() error {
	err := w.fs.op("close")
	if cerr := w.WriteFile.Close(); err == nil {
		err = cerr
	}
	return err
}

func (f *faultFS) Create(p string) (WriteFile, error) {
	if err := f.op("create " + filepath.Base(p)); err != nil {
		return nil, err
	}
	w, err := f.OSFS.Create(p)
	if err != nil {
		return nil, err
	}
	return faultFile{f, w}, nil
}

func (f *faultFS) MkdirAll(p string) error {
	if err := f.op("mkdir"); err != nil {
		return err
	}
	return f.OSFS.MkdirAll(p)
}

func (f *faultFS) Rename(a, b string) error {
	if err := f.op("rename " + filepath.Base(a) + " → " + filepath.Base(b)); err != nil {
		return err
	}
	return f.OSFS.Rename(a, b)
}

func (f *faultFS) RemoveAll(p string) error {
	if err := f.op("remove"); err != nil {
		return err
	}
	return f.OSFS.RemoveAll(p)
}

func (f *faultFS) SyncDir(p string) error {
	return f.op("syncdir") // no real fsync, as in faultFile.Sync
}

// ckptFixture builds params/optimiser state whose values encode the step, so that a restored
// checkpoint proves which step it came from.
func ckptFixture(step int) ([]Param, *AdamW, SaveInput) {
	m := newFakeModel(5, 4, 1)
	params := m.Params()
	for _, p := range params {
		for j := range p.Value {
			p.Value[j] = float32(step) + float32(j)/1000
		}
	}
	opt := NewAdamW(params, 0.9, 0.95, 1e-8, 0.1, nil)
	for i := range opt.M {
		for j := range opt.M[i] {
			opt.M[i][j], opt.V[i][j] = float32(step)*0.5, float32(step)*0.25
		}
	}
	opt.T = step
	in := SaveInput{
		State:  TrainState{Step: step, AdamStep: step, DataPosition: []byte(fmt.Sprintf(`{"window":%d}`, 3*step)), RNG: RNGState{Seed: 9, Counter: step}},
		Params: params, Opt: opt, Recipe: []byte("name: test\n"), ModelConfig: []byte(`{"dim":4}`),
	}
	return params, opt, in
}

// checkRestores opens the latest checkpoint with a clean filesystem and checks that it is the
// one of wantStep, down to every tensor value.
func checkRestores(t *testing.T, dir string, wantStep int) {
	t.Helper()
	s := &CheckpointStore{FS: OSFS{}, Dir: dir, Keep: 3}
	c, err := s.OpenLatest(false, io.Discard)
	if err != nil {
		t.Fatalf("open latest: %v", err)
	}
	var pos bytes.Buffer
	json.Compact(&pos, c.State.DataPosition)
	if c.State.Step != wantStep || pos.String() != fmt.Sprintf(`{"window":%d}`, 3*wantStep) || c.State.RNG.Counter != wantStep {
		t.Fatalf("latest checkpoint has state %+v, want step %d", c.State, wantStep)
	}
	params, opt, _ := ckptFixture(0)
	if err := s.Restore(c, params, opt); err != nil {
		t.Fatal(err)
	}
	wantParams, wantOpt, _ := ckptFixture(wantStep)
	for i := range params {
		if !bitsEqual(params[i].Value, wantParams[i].Value) || !bitsEqual(opt.M[i], wantOpt.M[i]) || !bitsEqual(opt.V[i], wantOpt.V[i]) {
			t.Fatalf("restored %s differs from step %d", params[i].Name, wantStep)
		}
	}
	if opt.T != wantStep {
		t.Fatalf("adam step %d, want %d", opt.T, wantStep)
	}
}

func bitsEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func TestCheckpointRoundTripAndKeepLastK(t *testing.T) {
	dir := t.TempDir()
	s := &CheckpointStore{FS: OSFS{}, Dir: dir, Keep: 2}
	for step := 1; step <= 5; step++ {
		_, _, in := ckptFixture(step)
		name, err := s.Save(in)
		if err != nil {
			t.Fatal(err)
		}
		if name != CheckpointName(step) {
			t.Fatalf("saved as %s", name)
		}
	}
	names, _ := s.List()
	if strings.Join(names, ",") != "step-0000004,step-0000005" {
		t.Fatalf("kept %v, want the newest 2", names)
	}
	checkRestores(t, dir, 5)
	latest, _ := os.ReadFile(filepath.Join(dir, "latest"))
	if string(latest) != "step-0000005\n" {
		t.Fatalf("latest = %q", latest)
	}
	// Restoring into a model of another shape is refused with a clear message.
	c, _ := s.OpenLatest(false, io.Discard)
	other := newFakeModel(6, 4, 1).Params()
	err := s.Restore(c, other, NewAdamW(other, 0.9, 0.95, 1e-8, 0, nil))
	if err == nil || !strings.Contains(err.Error(), "another model config") {
		t.Fatalf("restore into another shape: %v", err)
	}
}

func TestCorruptCheckpointIsReported(t *testing.T) {
	dir := t.TempDir()
	s := &CheckpointStore{FS: OSFS{}, Dir: dir, Keep: 3}
	for _, step := range []int{5, 10} {
		_, _, in := ckptFixture(step)
		if _, err := s.Save(in); err != nil {
			t.Fatal(err)
		}
	}
	w := filepath.Join(dir, "step-0000010", "weights.safetensors")
	b, _ := os.ReadFile(w)
	b[len(b)-3] ^= 0x10 // one flipped bit in the data
	os.WriteFile(w, b, 0o644)

	_, err := s.OpenLatest(false, io.Discard)
	var ce *CorruptError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v, want a CorruptError", err)
	}
	for _, want := range []string{"checkpoint step-0000010 is corrupt", "weights.safetensors sha256", "delete it", "continues from step 5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	var warn bytes.Buffer
	c, err := s.OpenLatest(true, &warn)
	if err != nil || c.State.Step != 5 || !strings.Contains(warn.String(), "using step-0000005") {
		t.Fatalf("fallback: %v, %+v, warning %q", err, c, warn.String())
	}

	// A truncated file is reported by size; a lone corrupt checkpoint says to start again.
	os.RemoveAll(filepath.Join(dir, "step-0000005"))
	os.WriteFile(w, b[:len(b)/2], 0o644)
	_, err = s.OpenLatest(true, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "truncated") || !strings.Contains(err.Error(), "no older checkpoint verifies") {
		t.Fatalf("truncated lone checkpoint: %v", err)
	}
	os.Remove(filepath.Join(dir, "step-0000010", "manifest.json"))
	if _, err = s.OpenLatest(false, io.Discard); err == nil || !strings.Contains(err.Error(), "manifest.json unreadable") {
		t.Fatalf("missing manifest: %v", err)
	}
}

func TestFullDiskLeavesPreviousCheckpointIntact(t *testing.T) {
	dir := t.TempDir()
	fsys := newFaultFS()
	s := &CheckpointStore{FS: fsys, Dir: dir, Keep: 3}
	_, _, in5 := ckptFixture(5)
	if _, err := s.Save(in5); err != nil {
		t.Fatal(err)
	}
	fsys.budget = 300 // the disk fills up part-way through the next weights file
	_, _, in10 := ckptFixture(10)
	_, err := s.Save(in10)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "step-0000005, is intact") {
		t.Fatalf("save on a full disk: %v", err)
	}
	checkRestores(t, dir, 5)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "step-0000005" && e.Name() != "latest" {
			t.Errorf("leftover %s after the failed save", e.Name())
		}
	}
}

// Inject a fault at every single filesystem operation of a save: whatever fails, the latest
// checkpoint must open, verify and hold either the old or (only once the pointer moved) the
// new state.
func TestSaveIsAtomicAtEveryFaultPoint(t *testing.T) {
	count := newFaultFS()
	probe := &CheckpointStore{FS: count, Dir: t.TempDir(), Keep: 1}
	_, _, in5 := ckptFixture(5)
	_, _, in10 := ckptFixture(10)
	probe.Save(in5)
	before := count.ops
	if _, err := probe.Save(in10); err != nil {
		t.Fatal(err)
	}
	total := count.ops - before
	ops := count.log[before:]
	t.Logf("%d operations in a save: %v", total, ops)
	if total < 20 {
		t.Fatalf("only %d operations in a save: %v", total, ops)
	}
	for k := 1; k <= total; k++ {
		dir := t.TempDir()
		fsys := newFaultFS()
		s := &CheckpointStore{FS: fsys, Dir: dir, Keep: 1}
		if _, err := s.Save(in5); err != nil {
			t.Fatal(err)
		}
		fsys.failAt = fsys.ops + k
		_, err := s.Save(in10)
		latest, _ := os.ReadFile(filepath.Join(dir, "latest"))
		switch {
		case err != nil && string(latest) == "step-0000005\n":
			checkRestores(t, dir, 5)
		case string(latest) == "step-0000010\n":
			checkRestores(t, dir, 10) // the fault hit after the pointer moved (sync or pruning)
		default:
			t.Fatalf("fault at op %d (%s): err %v, latest %q", k, ops[k-1], err, latest)
		}
	}
}

func errENOSPC() error { return syscall.ENOSPC }
