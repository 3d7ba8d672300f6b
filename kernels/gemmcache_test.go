package kernels

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestGemmCacheKeepsEveryDevicesChoices(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "gemm-algos.json")
	h200 := gemmCache{path: path, device: gemmDeviceKey("NVIDIA H200", 132, "libcublas.so.13", 130100)}
	a100 := gemmCache{path: path, device: gemmDeviceKey("NVIDIA A100", 108, "libcublas.so.12", 120400)}
	if m, err := h200.choices(); err != nil || len(m) != 0 {
		t.Fatalf("no file yet: %v, %v; want no choices", m, err)
	}
	k1, k2 := gemmShapeKey(0, 1, 2048, 16384, 5632, 5632, 5632, 2048), gemmShapeKey(1, 0, 2048, 5632, 16384, 2048, 5632, 2048)
	for _, s := range []struct {
		c                      gemmCache
		key, algo, stale, kept string
	}{
		{h200, k1, "aa01", "", "aa01"},
		{a100, k1, "bb02", "", "bb02"},
		{h200, k2, "cc03", "", "cc03"},
		{h200, k1, "ee05", "", "aa01"},     // another process stored k1 first: its choice is kept
		{h200, k1, "dd04", "aa01", "dd04"}, // aa01 could not be used (stale): replaced
	} {
		kept, err := s.c.store(s.key, s.algo, s.stale)
		if err != nil {
			t.Fatal(err)
		}
		if kept != s.kept {
			t.Errorf("store(%s, %s, stale %q) kept %s, want %s", s.key, s.algo, s.stale, kept, s.kept)
		}
	}
	m, err := h200.choices()
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m[k1] != "dd04" || m[k2] != "cc03" {
		t.Errorf("H200 choices %v, want %s → dd04 (the replacement) and %s → cc03", m, k1, k2)
	}
	if m, _ := a100.choices(); len(m) != 1 || m[k1] != "bb02" {
		t.Errorf("A100 choices %v, want only %s → bb02", m, k1)
	}
	// no temporary files left behind
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("the cache folder holds %d entries, want the file and its lock", len(entries))
	}
}

// Writers that store at once (the ranks of a data-parallel run tuning their first step) lose
// none of each other's entries: the read-merge-rename runs under the lock.
func TestGemmCacheConcurrentStoresKeepEveryEntry(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gemm-algos.json")
	const writers = 16
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := gemmCache{path: path, device: "d"}
			for j := range 4 {
				if _, err := c.store(fmt.Sprintf("shape-%d-%d", i, j), "a", ""); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	m, err := gemmCache{path: path, device: "d"}.choices()
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != writers*4 {
		t.Errorf("%d of %d entries kept", len(m), writers*4)
	}
}

func TestGemmCacheRejectsAForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gemm-algos.json")
	if err := os.WriteFile(path, []byte("not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := gemmCache{path: path, device: "d"}
	if _, err := c.choices(); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Errorf("a corrupt file: %v, want an error that says to delete it", err)
	}
	if _, err := c.store("k", "a", ""); err == nil {
		t.Error("store over a corrupt file succeeded, want the same error")
	}
	if b, _ := os.ReadFile(path); string(b) != "not json" {
		t.Error("the corrupt file was overwritten")
	}
}

func TestGemmCacheFileFollowsTheEnvironment(t *testing.T) {
	t.Setenv("DMC_GEMM_CACHE", "/some/where.json")
	if p, err := gemmCacheFile(); err != nil || p != "/some/where.json" {
		t.Errorf("gemmCacheFile() = %q, %v; want DMC_GEMM_CACHE's path", p, err)
	}
	t.Setenv("DMC_GEMM_CACHE", "")
	t.Setenv("XDG_CACHE_HOME", "/cache")
	t.Setenv("HOME", "/home/u")
	if p, err := gemmCacheFile(); err != nil || p != filepath.Join("/cache", "dmc", "gemm-algos.json") {
		t.Errorf("gemmCacheFile() = %q, %v; want it under the user cache folder", p, err)
	}
}
