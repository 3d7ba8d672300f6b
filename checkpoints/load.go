package checkpoints

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/dmc-project/dmc/model"
)

// Format is the kind of checkpoint a path holds.
type Format string

const (
	// FormatLlama2C is a llama2.c v0 .bin file.
	FormatLlama2C Format = "llama2c"
	// FormatHF is a Hugging Face Llama directory (config.json + safetensors).
	FormatHF Format = "hf"
)

// Source is a resolved checkpoint: its format and the file (llama2.c) or directory (HF) to read.
type Source struct {
	Format Format
	Path   string
}

// repoIDPattern matches a Hugging Face repo id: NAME or ORG/NAME.
var repoIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$`)

// Resolve finds the checkpoint that pathOrID names, by content rather than by file name:
//   - a directory with config.json (a Hugging Face Llama directory);
//   - a hub cache repository directory models--ORG--NAME (refs/main → snapshots/REV, else the
//     only or newest snapshot);
//   - a file: config.json or a .safetensors file stands for its directory; anything else must be
//     a llama2.c v0 checkpoint (its header is validated against the file size);
//   - a repo id ORG/NAME (or NAME) that is not a path on disk, looked up in the Hugging Face hub
//     cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).
//
// Errors list the places it looked.
func Resolve(pathOrID string) (Source, error) {
	if pathOrID == "" {
		return Source{}, errors.New("no checkpoint given: pass a llama2.c .bin file, a Hugging Face model directory, or a repo id ORG/NAME from the Hugging Face cache")
	}
	st, err := os.Stat(pathOrID)
	switch {
	case err == nil && st.IsDir():
		return resolveDir(pathOrID)
	case err == nil:
		return resolveFile(pathOrID)
	case !errors.Is(err, fs.ErrNotExist):
		return Source{}, fmt.Errorf("checkpoint %s: %w", pathOrID, err)
	}
	if !repoIDPattern.MatchString(pathOrID) {
		return Source{}, fmt.Errorf("checkpoint %q: no such file or directory (and it is not a Hugging Face repo id ORG/NAME)", pathOrID)
	}
	cache, how := HubCacheDir()
	repoDir := filepath.Join(cache, "models--"+strings.ReplaceAll(pathOrID, "/", "--"))
	if _, err := os.Stat(repoDir); err != nil {
		return Source{}, fmt.Errorf("checkpoint %q: not found; looked for the path %s and for the Hugging Face cache entry %s (cache dir from %s). Download it first (e.g. huggingface-cli download %s) or pass a local path",
			pathOrID, absOr(pathOrID), repoDir, how, pathOrID)
	}
	return resolveDir(repoDir)
}

// HubCacheDir is the Hugging Face hub cache directory and where that choice came from.
func HubCacheDir() (dir, source string) {
	if d := os.Getenv("HF_HUB_CACHE"); d != "" {
		return d, "$HF_HUB_CACHE"
	}
	if d := os.Getenv("HF_HOME"); d != "" {
		return filepath.Join(d, "hub"), "$HF_HOME/hub"
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "~"
	}
	return filepath.Join(home, ".cache", "huggingface", "hub"), "the default ~/.cache/huggingface/hub"
}

func resolveDir(dir string) (Source, error) {
	if fileExists(filepath.Join(dir, hfConfigFile)) {
		return Source{Format: FormatHF, Path: dir}, nil
	}
	if st, err := os.Stat(filepath.Join(dir, "snapshots")); err == nil && st.IsDir() {
		snap, err := resolveSnapshot(dir)
		if err != nil {
			return Source{}, err
		}
		if !fileExists(filepath.Join(snap, hfConfigFile)) {
			return Source{}, fmt.Errorf("hub cache snapshot %s has no %s (incomplete download?); download the full repository, or pass a weights file directly", snap, hfConfigFile)
		}
		return Source{Format: FormatHF, Path: snap}, nil
	}
	return Source{}, fmt.Errorf("directory %s is not a checkpoint: it has no %s (Hugging Face model) and no snapshots/ (Hugging Face hub cache repository); pass the model directory or a llama2.c .bin file", dir, hfConfigFile)
}

// resolveSnapshot picks the snapshot of a hub cache repository: the one refs/main names, else the
// only one, else the most recently modified.
func resolveSnapshot(repoDir string) (string, error) {
	snaps := filepath.Join(repoDir, "snapshots")
	looked := []string{}
	ref := filepath.Join(repoDir, "refs", "main")
	if b, err := os.ReadFile(ref); err == nil {
		rev := strings.TrimSpace(string(b))
		if rev != "" && rev == filepath.Base(rev) && rev != "." && rev != ".." {
			p := filepath.Join(snaps, rev)
			if st, err := os.Stat(p); err == nil && st.IsDir() {
				return p, nil
			}
			looked = append(looked, fmt.Sprintf("%s names %q but %s is missing", ref, rev, p))
		}
	} else {
		looked = append(looked, ref+" is absent")
	}
	entries, err := os.ReadDir(snaps)
	if err != nil {
		return "", fmt.Errorf("hub cache repository %s: %w", repoDir, err)
	}
	var best string
	var bestTime int64
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if t := info.ModTime().UnixNano(); best == "" || t > bestTime {
			best, bestTime = filepath.Join(snaps, e.Name()), t
		}
	}
	if best == "" {
		return "", fmt.Errorf("hub cache repository %s has no snapshot (%s; %s is empty); download the model again", repoDir, strings.Join(looked, "; "), snaps)
	}
	return best, nil
}

func resolveFile(path string) (Source, error) {
	base := filepath.Base(path)
	if base == hfConfigFile || base == hfIndexFile || isSafetensorsName(base) {
		dir := filepath.Dir(path)
		if !fileExists(filepath.Join(dir, hfConfigFile)) {
			return Source{}, fmt.Errorf("%s is part of a Hugging Face checkpoint, but %s has no %s; pass a complete model directory", path, dir, hfConfigFile)
		}
		return Source{Format: FormatHF, Path: dir}, nil
	}
	f, size, err := openSized(path)
	if err != nil {
		return Source{}, err
	}
	defer f.Close()
	var h [llama2cHeaderBytes]byte
	n, _ := f.ReadAt(h[:], 0)
	// A consistent header with the wrong file size is a damaged llama2.c file: let the reader
	// report the size problem instead of calling it an unknown format.
	if _, err := parseLlama2CHeader(h[:n], size); err != nil && !errors.Is(err, errLlama2CSize) {
		return Source{}, fmt.Errorf("%s is neither a Hugging Face checkpoint nor a llama2.c v0 checkpoint: %w", path, err)
	}
	return Source{Format: FormatLlama2C, Path: path}, nil
}

// Load reads the checkpoint that pathOrID names (see Resolve) and returns its weights and the
// file or directory it read. llama2.c weights come back with the interleaved RoPE layout and
// Hugging Face weights with the rotate-half layout; model.New runs either as is.
func Load(pathOrID string) (*model.Weights, string, error) {
	src, err := Resolve(pathOrID)
	if err != nil {
		return nil, "", err
	}
	var w *model.Weights
	switch src.Format {
	case FormatLlama2C:
		w, err = ReadLlama2C(src.Path)
	default:
		w, err = LoadHF(src.Path)
	}
	if err != nil {
		return nil, src.Path, err
	}
	return w, src.Path, nil
}

// LoadConfig reads only the architecture of the checkpoint pathOrID names (the llama2.c header
// or config.json), without reading any weights.
func LoadConfig(pathOrID string) (model.Config, string, error) {
	src, err := Resolve(pathOrID)
	if err != nil {
		return model.Config{}, "", err
	}
	if src.Format == FormatLlama2C {
		c, err := ReadLlama2CConfig(src.Path)
		return c, src.Path, err
	}
	hc, err := ReadHFConfig(src.Path)
	return hc.Config, src.Path, err
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
