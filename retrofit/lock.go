package retrofit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the run directory's lock: held (flock) by the process training in it, and
// holding that process's PID.
const LockFile = ".lock"

// ErrRunLocked is returned when another process trains in the run directory.
var ErrRunLocked = errors.New("run directory in use")

// lockRun takes the exclusive lock of run directory dir; the returned func releases it. A
// second retrofit on the same directory is refused with the holder's PID. The lock dies with
// its process, so a killed run never leaves a stale lock behind.
func lockRun(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(p)
		f.Close()
		holder := "another process"
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
			holder = fmt.Sprintf("process %d", pid)
		}
		return nil, fmt.Errorf("%w: %s is being trained by %s (dmc retrofit); wait for it to finish or stop it, or use another --out", ErrRunLocked, dir, holder)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// absPath makes p absolute when it names an existing file or directory (optionally followed
// by ":SPLIT"), so that run.json works from any working directory; other values (presets, hub
// ids, embedded recipe names) are kept as they are.
func absPath(p string) string {
	if p == "" {
		return p
	}
	try := func(q string) (string, bool) {
		if _, err := os.Stat(q); err != nil {
			return "", false
		}
		a, err := filepath.Abs(q)
		return a, err == nil
	}
	if a, ok := try(p); ok {
		return a
	}
	if i := strings.LastIndex(p, ":"); i > 0 {
		if a, ok := try(p[:i]); ok {
			return a + p[i:]
		}
	}
	return p
}
