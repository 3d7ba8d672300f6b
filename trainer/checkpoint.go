package trainer

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/dmc-project/dmc/checkpoints"
	"github.com/dmc-project/dmc/model"
)

// Checkpoint layout (RUN_DIR/checkpoints/step-XXXXXXX/):
//
//	weights.safetensors    parameters (fp32)
//	optimizer.safetensors  AdamW moments "m.NAME", "v.NAME" (fp32)
//	state.json             step, optimiser step, data position, RNG state, counters
//	recipe.yaml            the resolved recipe
//	model.json             the model configuration
//	manifest.json          size and sha256 of every file above; written last
//
// A checkpoint is built in a temporary sibling directory, every file and the directory are
// fsynced, and only then is it renamed into place; the "latest" file (the name of the newest
// checkpoint) is replaced the same way afterwards. A crash or a full disk at any point leaves
// the previous checkpoint and pointer intact.

const (
	checkpointFormat = 1
	latestFile       = "latest"
	manifestFile     = "manifest.json"
	tmpPrefix        = ".tmp-"
	oldPrefix        = ".old-"
	corruptPrefix    = "corrupt-"
)

// RNGState describes the trainer's randomness. It is counter-based: the noise of a step is
// StepSeed(Seed, step, Rank, micro-batch), so the state is the seed and the step counter.
// Rank is 0: micro-batches are numbered over all ranks of a data-parallel group (Comm).
type RNGState struct {
	Kind    string `json:"kind"`
	Seed    uint64 `json:"seed"`
	Rank    int    `json:"rank"`
	Counter int    `json:"counter"`
}

// TrainState is state.json: everything besides tensors that resume needs.
type TrainState struct {
	Format         int             `json:"format"`
	Step           int             `json:"step"` // optimiser steps completed
	Stage          string          `json:"stage"`
	AdamStep       int             `json:"adam_step"`
	DataPosition   json.RawMessage `json:"data_position"`
	RNG            RNGState        `json:"rng"`
	TokensSeen     int64           `json:"tokens_seen"`
	ElapsedSeconds float64         `json:"elapsed_s"`
}

type manifestEntry struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type manifest struct {
	Format int             `json:"format"`
	Step   int             `json:"step"`
	Files  []manifestEntry `json:"files"`
}

// CheckpointStore reads and writes the checkpoints of one run directory.
type CheckpointStore struct {
	FS   FS
	Dir  string // RUN_DIR/checkpoints
	Keep int    // number of newest checkpoints kept (≥ 1)
}

// Checkpoint is a verified checkpoint on disk (tensors are read by Restore).
type Checkpoint struct {
	Name        string // step-XXXXXXX
	Path        string
	State       TrainState
	Recipe      []byte
	ModelConfig []byte
}

// CorruptError reports a checkpoint that failed verification.
type CorruptError struct {
	Name     string
	Reason   string
	Previous string // newest older checkpoint that verifies, "" if none
	dir      string
}

func (e *CorruptError) Error() string {
	msg := fmt.Sprintf("checkpoint %s is corrupt: %s; ", e.Name, e.Reason)
	if e.Previous != "" {
		step, _ := ParseCheckpointName(e.Previous)
		return msg + fmt.Sprintf("delete it (rm -r %s) and resume: the run continues from step %d (%s, the newest checkpoint that verifies)", path.Join(e.dir, e.Name), step, e.Previous)
	}
	return msg + fmt.Sprintf("no older checkpoint verifies either: delete %s and start the run again without resume", path.Join(e.dir, e.Name))
}

// CheckpointName is the directory name of the checkpoint after step optimiser steps.
func CheckpointName(step int) string { return fmt.Sprintf("step-%07d", step) }

// ParseCheckpointName is the inverse of CheckpointName.
func ParseCheckpointName(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "step-")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

// SaveInput is what one checkpoint holds.
type SaveInput struct {
	State       TrainState
	Params      []Param
	Opt         *AdamW
	Recipe      []byte // resolved recipe YAML
	ModelConfig []byte // JSON
}

// Save writes a checkpoint atomically, points "latest" at it and prunes old ones. On error the
// previous checkpoint and pointer are untouched and the partial directory is removed.
func (s *CheckpointStore) Save(in SaveInput) (name string, err error) {
	name = CheckpointName(in.State.Step)
	final := path.Join(s.Dir, name)
	tmp := path.Join(s.Dir, tmpPrefix+name)
	defer func() {
		if err != nil {
			_ = s.FS.RemoveAll(tmp) // best effort; a leftover is cleaned by the next save
			prev, _ := s.readLatest()
			if prev == "" {
				prev = "none"
			}
			err = fmt.Errorf("save checkpoint %s: %w (the previous checkpoint, %s, is intact)", name, err, prev)
		}
	}()
	if err := s.FS.MkdirAll(s.Dir); err != nil {
		return "", err
	}
	if err := s.FS.RemoveAll(tmp); err != nil {
		return "", err
	}
	if err := s.FS.MkdirAll(tmp); err != nil {
		return "", err
	}
	in.State.Format = checkpointFormat
	if in.State.DataPosition == nil {
		in.State.DataPosition = json.RawMessage("null")
	}
	stateJSON, err := json.MarshalIndent(in.State, "", "  ")
	if err != nil {
		return "", err
	}
	weights := make([]model.Tensor[float32], len(in.Params))
	moments := make([]model.Tensor[float32], 0, 2*len(in.Params))
	for i, p := range in.Params {
		weights[i] = model.Tensor[float32]{Name: p.Name, Shape: p.Shape, Data: p.Value}
		moments = appendMoments(moments, in.Opt, i, p)
	}
	meta := map[string]string{"format": "dmc-training-checkpoint", "step": strconv.Itoa(in.State.Step)}
	files := []struct {
		name  string
		write func(io.Writer) error
	}{
		{"weights.safetensors", func(w io.Writer) error { return checkpoints.EncodeSafetensors(w, weights, checkpoints.F32, meta) }},
		{"optimizer.safetensors", func(w io.Writer) error { return checkpoints.EncodeSafetensors(w, moments, checkpoints.F32, meta) }},
		{"state.json", writeBytes(stateJSON)},
		{"recipe.yaml", writeBytes(in.Recipe)},
		{"model.json", writeBytes(in.ModelConfig)},
	}
	man := manifest{Format: checkpointFormat, Step: in.State.Step}
	for _, f := range files {
		e, err := s.writeFile(path.Join(tmp, f.name), f.write)
		if err != nil {
			return "", err
		}
		e.Name = f.name
		man.Files = append(man.Files, e)
	}
	manJSON, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return "", err
	}
	if _, err := s.writeFile(path.Join(tmp, manifestFile), writeBytes(manJSON)); err != nil {
		return "", err
	}
	if err := s.FS.SyncDir(tmp); err != nil {
		return "", err
	}
	// A checkpoint of the same step may exist (re-saving after a resume): move it aside first,
	// since a directory cannot be renamed over a non-empty one.
	if _, statErr := s.FS.Stat(final); statErr == nil {
		old := path.Join(s.Dir, oldPrefix+name)
		_ = s.FS.RemoveAll(old)
		if err := s.FS.Rename(final, old); err != nil {
			return "", err
		}
	}
	if err := s.FS.Rename(tmp, final); err != nil {
		_ = s.FS.Rename(path.Join(s.Dir, oldPrefix+name), final) // put a moved-aside one back
		return "", err
	}
	if err := s.FS.SyncDir(s.Dir); err != nil {
		return "", err
	}
	if err := s.writeLatest(name); err != nil {
		return "", err
	}
	s.prune(name)
	return name, nil
}

func writeBytes(b []byte) func(io.Writer) error {
	return func(w io.Writer) error { _, err := w.Write(b); return err }
}

type countingHashWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countingHashWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// writeFile creates p, writes it through a sha256, fsyncs and closes it.
func (s *CheckpointStore) writeFile(p string, write func(io.Writer) error) (manifestEntry, error) {
	f, err := s.FS.Create(p)
	if err != nil {
		return manifestEntry{}, err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	cw := &countingHashWriter{w: bw, h: sha256.New()}
	err = write(cw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return manifestEntry{}, fmt.Errorf("write %s: %w", path.Base(p), err)
	}
	return manifestEntry{Size: cw.n, SHA256: hex.EncodeToString(cw.h.Sum(nil))}, nil
}

func (s *CheckpointStore) writeLatest(name string) error {
	tmp := path.Join(s.Dir, tmpPrefix+latestFile)
	if _, err := s.writeFile(tmp, writeBytes([]byte(name+"\n"))); err != nil {
		return err
	}
	if err := s.FS.Rename(tmp, path.Join(s.Dir, latestFile)); err != nil {
		return err
	}
	return s.FS.SyncDir(s.Dir)
}

func (s *CheckpointStore) readLatest() (string, error) {
	b, err := readAll(s.FS, path.Join(s.Dir, latestFile))
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(b))
	if _, ok := ParseCheckpointName(name); !ok {
		return "", fmt.Errorf("%s: %q is not a checkpoint name", path.Join(s.Dir, latestFile), name)
	}
	return name, nil
}

// List returns the checkpoint names on disk, oldest first (verified or not).
func (s *CheckpointStore) List() ([]string, error) {
	entries, err := s.FS.ReadDir(s.Dir)
	if err != nil {
		return nil, err
	}
	type ck struct {
		name string
		step int
	}
	var cks []ck
	for _, e := range entries {
		if step, ok := ParseCheckpointName(e.Name()); ok && e.IsDir() {
			cks = append(cks, ck{e.Name(), step})
		}
	}
	sort.Slice(cks, func(i, j int) bool { return cks[i].step < cks[j].step })
	names := make([]string, len(cks))
	for i, c := range cks {
		names[i] = c.name
	}
	return names, nil
}

// prune removes all but the newest Keep checkpoints (never keep, the one just written) and
// leftovers of interrupted saves. Failures are ignored: pruning is housekeeping.
func (s *CheckpointStore) prune(keep string) {
	entries, err := s.FS.ReadDir(s.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) || strings.HasPrefix(e.Name(), oldPrefix) {
			_ = s.FS.RemoveAll(path.Join(s.Dir, e.Name()))
		}
	}
	names, err := s.List()
	if err != nil {
		return
	}
	k := max(s.Keep, 1)
	latest, _ := s.readLatest() // == keep after a save; never remove what "latest" names
	for i := 0; i < len(names)-k; i++ {
		if names[i] != keep && names[i] != latest {
			_ = s.FS.RemoveAll(path.Join(s.Dir, names[i]))
		}
	}
}

// Open verifies a checkpoint (manifest, sizes, sha256 of every file) and reads its state.
// A failed verification is a *CorruptError.
func (s *CheckpointStore) Open(name string) (*Checkpoint, error) {
	dir := path.Join(s.Dir, name)
	corrupt := func(format string, a ...any) error {
		return &CorruptError{Name: name, Reason: fmt.Sprintf(format, a...), dir: s.Dir}
	}
	manJSON, err := readAll(s.FS, path.Join(dir, manifestFile))
	if err != nil {
		return nil, corrupt("%s unreadable (%v)", manifestFile, err)
	}
	var man manifest
	if err := json.Unmarshal(manJSON, &man); err != nil {
		return nil, corrupt("%s: %v", manifestFile, err)
	}
	if man.Format != checkpointFormat {
		return nil, fmt.Errorf("checkpoint %s has format %d; this dmc reads format %d", name, man.Format, checkpointFormat)
	}
	contents := map[string][]byte{}
	for _, e := range man.Files {
		f, err := s.FS.Open(path.Join(dir, e.Name))
		if err != nil {
			return nil, corrupt("%s unreadable (%v)", e.Name, err)
		}
		h := sha256.New()
		var keep bytes.Buffer
		var w io.Writer = h
		if !strings.HasSuffix(e.Name, ".safetensors") {
			w = io.MultiWriter(h, &keep) // small files: keep their bytes
		}
		n, err := io.Copy(w, f)
		f.Close()
		if err != nil {
			return nil, corrupt("%s unreadable (%v)", e.Name, err)
		}
		if n != e.Size {
			return nil, corrupt("%s has %d bytes, the manifest says %d (truncated or changed)", e.Name, n, e.Size)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != e.SHA256 {
			return nil, corrupt("%s sha256 is %s…, the manifest says %s… (the file changed after it was written)", e.Name, got[:12], e.SHA256[:min(12, len(e.SHA256))])
		}
		contents[e.Name] = keep.Bytes()
	}
	for _, need := range []string{"weights.safetensors", "optimizer.safetensors", "state.json", "recipe.yaml", "model.json"} {
		if _, ok := contents[need]; !ok {
			return nil, corrupt("the manifest does not list %s", need)
		}
	}
	c := &Checkpoint{Name: name, Path: dir, Recipe: contents["recipe.yaml"], ModelConfig: contents["model.json"]}
	if err := json.Unmarshal(contents["state.json"], &c.State); err != nil {
		return nil, corrupt("state.json: %v", err)
	}
	if c.State.Step != man.Step {
		return nil, corrupt("state.json says step %d, the manifest says %d", c.State.Step, man.Step)
	}
	return c, nil
}

// appendMoments adds parameter i's moments (none for a frozen parameter; a trained row subset
// compacted, see AdamW.MomentShape).
func appendMoments(ts []model.Tensor[float32], opt *AdamW, i int, p Param) []model.Tensor[float32] {
	shape := opt.MomentShape(i, p)
	if shape == nil {
		return ts
	}
	return append(ts, model.Tensor[float32]{Name: "m." + p.Name, Shape: shape, Data: opt.M[i]},
		model.Tensor[float32]{Name: "v." + p.Name, Shape: shape, Data: opt.V[i]})
}

// Restore reads the checkpoint's weights into params and its moments into opt.
func (s *CheckpointStore) Restore(c *Checkpoint, params []Param, opt *AdamW) error {
	weights := make([]model.Tensor[float32], len(params))
	moments := make([]model.Tensor[float32], 0, 2*len(params))
	for i, p := range params {
		weights[i] = model.Tensor[float32]{Name: p.Name, Shape: p.Shape, Data: p.Value}
		moments = appendMoments(moments, opt, i, p)
	}
	for _, f := range []struct {
		name string
		ts   []model.Tensor[float32]
	}{{"weights.safetensors", weights}, {"optimizer.safetensors", moments}} {
		r, err := s.FS.Open(path.Join(c.Path, f.name))
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", c.Name, err)
		}
		err = checkpoints.ReadSafetensorsInto(r, f.ts)
		r.Close()
		if err != nil {
			return fmt.Errorf("checkpoint %s: %s: %w", c.Name, f.name, err)
		}
	}
	opt.T = c.State.AdamStep
	return nil
}

// ErrNoCheckpoint means the run directory has no checkpoint to resume from.
var ErrNoCheckpoint = errors.New("no checkpoint to resume from")

// OpenLatest opens the checkpoint "latest" names (or, without a pointer, the newest one on
// disk). If it is corrupt the error names the newest older checkpoint that verifies; with
// fallback that one is opened instead and a warning is written to warn.
func (s *CheckpointStore) OpenLatest(fallback bool, warn io.Writer) (*Checkpoint, error) {
	names, err := s.List()
	if err != nil || len(names) == 0 {
		return nil, fmt.Errorf("%w in %s", ErrNoCheckpoint, s.Dir)
	}
	latest, perr := s.readLatest()
	if perr != nil {
		latest = names[len(names)-1]
		fmt.Fprintf(warn, "warning: cannot read %s (%v); trying the newest checkpoint, %s\n", path.Join(s.Dir, latestFile), perr, latest)
	}
	c, err := s.Open(latest)
	if err == nil {
		return c, nil
	}
	var ce *CorruptError
	if !errors.As(err, &ce) {
		return nil, err
	}
	latestStep, _ := ParseCheckpointName(latest)
	for i := len(names) - 1; i >= 0; i-- {
		st, _ := ParseCheckpointName(names[i])
		if st >= latestStep {
			continue
		}
		prev, perr := s.Open(names[i])
		if perr != nil {
			continue
		}
		ce.Previous = names[i]
		if fallback {
			fmt.Fprintf(warn, "warning: checkpoint %s is corrupt: %s; using %s (step %d), the newest checkpoint that verifies\n", ce.Name, ce.Reason, names[i], st)
			return prev, nil
		}
		return nil, ce
	}
	return nil, ce
}

// SetAside renames a checkpoint that failed verification to corrupt-NAME (replacing an
// earlier one of that name), out of List and pruning, and returns the new path.
func (s *CheckpointStore) SetAside(name string) (string, error) {
	to := path.Join(s.Dir, corruptPrefix+name)
	if err := s.FS.RemoveAll(to); err != nil {
		return "", err
	}
	if err := s.FS.Rename(path.Join(s.Dir, name), to); err != nil {
		return "", err
	}
	return to, s.FS.SyncDir(s.Dir)
}
