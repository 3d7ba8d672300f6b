package trainer

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

// mapFS is a read-only FS over an in-memory map (paths relative, slash-separated), so that a
// fuzzed manifest naming "../../x" cannot reach real files.
type mapFS struct{ m fstest.MapFS }

var errReadOnly = errors.New("read-only fuzz filesystem")

func (f mapFS) MkdirAll(string) error                   { return errReadOnly }
func (f mapFS) Create(string) (WriteFile, error)        { return nil, errReadOnly }
func (f mapFS) Rename(string, string) error             { return errReadOnly }
func (f mapFS) RemoveAll(string) error                  { return errReadOnly }
func (f mapFS) SyncDir(string) error                    { return errReadOnly }
func (f mapFS) Open(p string) (io.ReadCloser, error)    { return f.m.Open(p) }
func (f mapFS) ReadDir(p string) ([]fs.DirEntry, error) { return fs.ReadDir(f.m, p) }
func (f mapFS) Stat(p string) (fs.FileInfo, error)      { return fs.Stat(f.m, p) }

// FuzzCheckpointManifest feeds arbitrary manifest.json, state.json and "latest" bytes to the
// checkpoint verifier (Open, OpenLatest with and without fallback). A checkpoint that opens
// has the step its manifest and state agree on, and every file the manifest lists matches.
func FuzzCheckpointManifest(f *testing.F) {
	// A real checkpoint, saved to disk and loaded into memory.
	dir := f.TempDir()
	s := &CheckpointStore{FS: OSFS{}, Dir: dir, Keep: 2}
	_, _, in := ckptFixture(3)
	name, err := s.Save(in)
	if err != nil {
		f.Fatal(err)
	}
	base := fstest.MapFS{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		base[path.Join("ckpts", filepath.ToSlash(rel))] = &fstest.MapFile{Data: b}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	ck := path.Join("ckpts", name)
	man, state, latest := base[path.Join(ck, manifestFile)].Data, base[path.Join(ck, "state.json")].Data, base["ckpts/"+latestFile].Data
	f.Add(man, state, latest)
	f.Add(man, []byte(`{"step": 4}`), latest)
	f.Add([]byte(`{"format": 1, "step": 3, "files": [{"name": "../../../etc/passwd", "size": 1, "sha256": "x"}]}`), state, latest)
	f.Add([]byte(`{"format": 1, "step": 3, "files": [{"name": "state.json", "size": -1, "sha256": ""}]}`), state, []byte("step-0000003"))
	f.Add([]byte(`{"format": 2}`), state, []byte("step--1\n"))
	f.Add([]byte(`null`), []byte(`null`), []byte("\x00"))

	f.Fuzz(func(t *testing.T, man, state, latest []byte) {
		m := fstest.MapFS{}
		for k, v := range base {
			m[k] = v
		}
		m[path.Join(ck, manifestFile)] = &fstest.MapFile{Data: man}
		m[path.Join(ck, "state.json")] = &fstest.MapFile{Data: state}
		m["ckpts/"+latestFile] = &fstest.MapFile{Data: latest}
		store := &CheckpointStore{FS: mapFS{m}, Dir: "ckpts", Keep: 2}
		check := func(c *Checkpoint, err error) {
			if err != nil {
				var ce *CorruptError
				if errors.As(err, &ce) && ce.Error() == "" {
					t.Fatal("empty corrupt error")
				}
				return
			}
			var mm manifest
			if err := json.Unmarshal(man, &mm); err != nil {
				t.Fatalf("opened a checkpoint whose manifest does not parse: %v", err)
			}
			if c.Name != name || c.State.Step != mm.Step {
				t.Fatalf("opened %q at step %d, manifest step %d", c.Name, c.State.Step, mm.Step)
			}
			// Every listed file verified: the kept small files are the ones on "disk".
			if !bytes.Equal(c.Recipe, m[path.Join(ck, "recipe.yaml")].Data) {
				t.Fatal("recipe differs from the verified file")
			}
			if len(c.Recipe) == 0 || len(c.ModelConfig) == 0 {
				t.Fatal("a verified checkpoint without recipe or model config")
			}
		}
		check(store.Open(name))
		check(store.OpenLatest(false, io.Discard))
		var warn strings.Builder
		check(store.OpenLatest(true, &warn))
	})
}
