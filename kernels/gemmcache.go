package kernels

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// gemmCache keeps the GEMM algorithms that TrainDevice.TuneGEMM chose, by device (GPU and
// cuBLAS version) and GEMM shape, in one JSON file, so that every later run on the same kind
// of machine runs the same algorithms: the same command then gives the same bits again, and a
// resumed run equals an uninterrupted one. Only the first run of a shape on a machine
// depends on timing. The file holds every device's choices; a cuBLAS upgrade starts afresh.
type gemmCache struct {
	path   string
	device string
}

// gemmCacheFile is the choices' file: $DMC_GEMM_CACHE, else gemm-algos.json in the user's
// cache folder (os.UserCacheDir()/dmc).
func gemmCacheFile() (string, error) {
	if p := os.Getenv("DMC_GEMM_CACHE"); p != "" {
		return p, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache folder for the tuned GEMM algorithms (set DMC_GEMM_CACHE to a file): %w", err)
	}
	return filepath.Join(dir, "dmc", "gemm-algos.json"), nil
}

// gemmCacheDoc is the file's content: device → shape key → the algorithm (hex of cuBLASLt's
// opaque algorithm bytes).
type gemmCacheDoc struct {
	Note    string                       `json:"note"`
	Devices map[string]map[string]string `json:"devices"`
}

func (c gemmCache) read() (gemmCacheDoc, error) {
	doc := gemmCacheDoc{Devices: map[string]map[string]string{}}
	b, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return doc, nil
	}
	if err != nil {
		return doc, err
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return doc, fmt.Errorf("%s is not a GEMM algorithm cache (%v): delete it to tune again", c.path, err)
	}
	if doc.Devices == nil {
		doc.Devices = map[string]map[string]string{}
	}
	return doc, nil
}

// choices returns this device's chosen algorithms by shape key.
func (c gemmCache) choices() (map[string]string, error) {
	doc, err := c.read()
	if err != nil {
		return nil, err
	}
	m := doc.Devices[c.device]
	if m == nil {
		m = map[string]string{}
	}
	return m, nil
}

// store records algo for shape key and rewrites the file atomically (a temporary file renamed
// over it), keeping what other devices and processes stored before. The read, merge and
// rename run under an advisory lock of the file's folder (lockFile), so that processes
// tuning at once (the ranks of a data-parallel run) lose none of each other's entries, and a
// key another process stored first is kept unless it is stale (the entry the caller read and
// could not use: replaced): kept is the algorithm the file holds for key afterwards, which
// every process then runs.
func (c gemmCache) store(key, algo, stale string) (kept string, err error) {
	if err := os.MkdirAll(filepath.Dir(c.path), 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(c.path + ".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	doc, err := c.read()
	if err != nil {
		return "", err
	}
	if old, ok := doc.Devices[c.device][key]; ok && old != stale {
		return old, nil
	}
	return algo, c.write(doc, key, algo)
}

func (c gemmCache) write(doc gemmCacheDoc, key, algo string) error {
	doc.Note = "GEMM algorithms chosen by timing (dmc, DMC_GEMM_TUNE=1), by device and shape; delete the file to tune again"
	if doc.Devices[c.device] == nil {
		doc.Devices[c.device] = map[string]string{}
	}
	doc.Devices[c.device][key] = algo
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.path), ".gemm-algos-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), c.path)
}

// gemmShapeKey names a GEMM shape in the cache.
func gemmShapeKey(ta, tb, m, n, k, lda, ldb, ldc int) string {
	return fmt.Sprintf("t%d%d m%d n%d k%d ld%d,%d,%d", ta, tb, m, n, k, lda, ldb, ldc)
}

// gemmDeviceKey names a device in the cache: what decides which algorithms exist and how
// fast they are (the GPU, its multiprocessor count and the cuBLAS build).
func gemmDeviceKey(name string, sms int, blasLib string, blasVersion int) string {
	return strings.TrimSpace(fmt.Sprintf("%s, %d SMs, %s v%d", name, sms, blasLib, blasVersion))
}
