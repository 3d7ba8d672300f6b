package checkpoints

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dmc-project/dmc/model"
)

// fakeHubRepo builds models--ORG--NAME the way huggingface_hub does: file contents in blobs/,
// snapshots/REV/ holding symlinks to them, refs/main naming a revision (when ref != "").
func fakeHubRepo(t *testing.T, cache, repoID, ref string, revs ...string) string {
	t.Helper()
	repo := filepath.Join(cache, "models--"+strings.ReplaceAll(repoID, "/", "--"))
	src := t.TempDir()
	if err := WriteHF(src, randomWeights(t, tinyConfig(true), 4), "bf16", nil, 0); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(repo, "blobs"), 0o755))
	for i, rev := range revs {
		snap := filepath.Join(repo, "snapshots", rev)
		must(os.MkdirAll(snap, 0o755))
		for _, name := range []string{"config.json", "model.safetensors"} {
			b, err := os.ReadFile(filepath.Join(src, name))
			must(err)
			blob := filepath.Join(repo, "blobs", rev+"-"+name)
			must(os.WriteFile(blob, b, 0o644))
			must(os.Symlink(filepath.Join("..", "..", "blobs", rev+"-"+name), filepath.Join(snap, name)))
		}
		mt := time.Date(2025, 1, 1+i, 0, 0, 0, 0, time.UTC)
		must(os.Chtimes(snap, mt, mt))
	}
	if ref != "" {
		must(os.MkdirAll(filepath.Join(repo, "refs"), 0o755))
		must(os.WriteFile(filepath.Join(repo, "refs", "main"), []byte(ref+"\n"), 0o644))
	}
	return repo
}

func TestResolveHubCache(t *testing.T) {
	tests := []struct {
		name    string
		ref     string
		revs    []string
		want    string // snapshot expected
		wantErr string
	}{
		{"refs/main wins over newer snapshot", "aaa", []string{"aaa", "bbb"}, "aaa", ""},
		{"no refs: single snapshot", "", []string{"only"}, "only", ""},
		{"no refs: newest snapshot", "", []string{"old", "new", "mid"}, "mid", ""},
		{"dangling ref falls back to newest", "gone", []string{"x1", "x2"}, "x2", ""},
		{"no snapshots", "abc", nil, "", "has no snapshot"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cache := t.TempDir()
			t.Setenv("HF_HUB_CACHE", cache)
			repo := fakeHubRepo(t, cache, "org/tiny-model", tc.ref, tc.revs...)
			if tc.revs == nil {
				os.MkdirAll(filepath.Join(repo, "snapshots"), 0o755)
			}
			for _, arg := range []string{"org/tiny-model", repo} {
				src, err := Resolve(arg)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("Resolve(%s) error %v, want %q", arg, err, tc.wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if want := filepath.Join(repo, "snapshots", tc.want); src.Path != want || src.Format != FormatHF {
					t.Fatalf("Resolve(%s) = %+v, want %s", arg, src, want)
				}
			}
			if tc.wantErr != "" {
				return
			}
			w, dir, err := Load("org/tiny-model")
			if err != nil {
				t.Fatal(err)
			}
			if w.Config.Dim != 16 || w.Config.RoPE != model.RoPEHalf || !strings.HasSuffix(dir, tc.want) {
				t.Errorf("loaded %+v from %s", w.Config, dir)
			}
		})
	}
}

func TestHubCacheDirPrecedence(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HF_HOME", "")
	if d, _ := HubCacheDir(); d != filepath.Join(home, ".cache", "huggingface", "hub") {
		t.Errorf("default cache dir %s", d)
	}
	t.Setenv("HF_HOME", "/hf/home")
	if d, src := HubCacheDir(); d != "/hf/home/hub" || src != "$HF_HOME/hub" {
		t.Errorf("HF_HOME cache dir %s (%s)", d, src)
	}
	t.Setenv("HF_HUB_CACHE", "/hub/cache")
	if d, _ := HubCacheDir(); d != "/hub/cache" {
		t.Errorf("HF_HUB_CACHE cache dir %s", d)
	}
	// A repo id is found in the default location.
	t.Setenv("HF_HUB_CACHE", "")
	t.Setenv("HF_HOME", "")
	fakeHubRepo(t, filepath.Join(home, ".cache", "huggingface", "hub"), "meta/llama-tiny", "r1", "r1")
	if c, dir, err := LoadConfig("meta/llama-tiny"); err != nil || c.NLayers != 2 || filepath.Base(dir) != "r1" {
		t.Errorf("LoadConfig from default cache: %+v %s %v", c, dir, err)
	}
}

func TestResolveNotFoundListsPlaces(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("HF_HUB_CACHE", cache)
	_, err := Resolve("nobody/nothing")
	if err == nil {
		t.Fatal("found a model that does not exist")
	}
	for _, s := range []string{"nobody/nothing", filepath.Join(cache, "models--nobody--nothing"), "$HF_HUB_CACHE", "huggingface-cli download"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if _, err := Resolve("./no/such/../path.bin"); err == nil || !strings.Contains(err.Error(), "no such file or directory") {
		t.Errorf("missing path: %v", err)
	}
	if _, err := Resolve(""); err == nil {
		t.Error("empty path accepted")
	}
}

func TestLoadDispatch(t *testing.T) {
	dir := t.TempDir()
	w := randomWeights(t, tinyConfig(false), 2)
	bin := filepath.Join(dir, "weights.dat") // the name does not matter, the content does
	if err := WriteLlama2C(bin, w); err != nil {
		t.Fatal(err)
	}
	hf := filepath.Join(dir, "hf")
	if err := WriteHF(hf, w, "f32", nil, 0); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.bin")
	os.WriteFile(junk, []byte("this is not a checkpoint at all, just text"), 0o644)
	truncated := filepath.Join(dir, "truncated.bin")
	b, _ := os.ReadFile(bin)
	os.WriteFile(truncated, b[:len(b)-8], 0o644)
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	orphan := filepath.Join(dir, "orphan")
	os.Mkdir(orphan, 0o755)
	os.WriteFile(filepath.Join(orphan, "model.safetensors"), nil, 0o644)

	tests := []struct {
		arg    string
		format Format
		path   string
		err    string
	}{
		{bin, FormatLlama2C, bin, ""},
		{hf, FormatHF, hf, ""},
		{filepath.Join(hf, "config.json"), FormatHF, hf, ""},
		{filepath.Join(hf, "model.safetensors"), FormatHF, hf, ""},
		{truncated, "", "", ""},
		{junk, "", "", "neither a Hugging Face checkpoint nor a llama2.c v0 checkpoint"},
		{empty, "", "", "has no config.json (Hugging Face model) and no snapshots/"},
		{filepath.Join(orphan, "model.safetensors"), "", "", "has no config.json"},
	}
	for _, tc := range tests {
		if tc.arg == truncated { // recognised as llama2.c, then reported as damaged
			if src, err := Resolve(truncated); err != nil || src.Format != FormatLlama2C {
				t.Errorf("Resolve(truncated) = %+v, %v", src, err)
			}
			if _, _, err := Load(truncated); err == nil || !strings.Contains(err.Error(), "the file is truncated") {
				t.Errorf("Load(truncated): %v", err)
			}
			continue
		}
		src, err := Resolve(tc.arg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Resolve(%s): error %v, want %q", tc.arg, err, tc.err)
			}
			if _, _, err := Load(tc.arg); err == nil {
				t.Errorf("Load(%s) succeeded", tc.arg)
			}
			continue
		}
		if err != nil || src.Format != tc.format || src.Path != tc.path {
			t.Errorf("Resolve(%s) = %+v, %v; want %s %s", tc.arg, src, err, tc.format, tc.path)
			continue
		}
		loaded, at, err := Load(tc.arg)
		if err != nil || at != tc.path {
			t.Fatalf("Load(%s) = %s, %v", tc.arg, at, err)
		}
		cfg, at2, err := LoadConfig(tc.arg)
		if err != nil || at2 != tc.path || cfg != loaded.Config {
			t.Errorf("LoadConfig(%s) = %+v %s %v; Load gave %+v", tc.arg, cfg, at2, err, loaded.Config)
		}
		// Both formats compute the same model.
		tokens := []int{3, 1, 4, 1, 5}
		a, b := forwardAll(t, w, tokens), forwardAll(t, loaded, tokens)
		for i := range a {
			if d := a[i] - b[i]; d > 1e-5 || d < -1e-5 {
				t.Fatalf("Load(%s): logit %d differs by %g", tc.arg, i, d)
			}
		}
	}
}

// LoadConfig must not read weights: it works even when the weights are unreadable.
func TestLoadConfigReadsNoWeights(t *testing.T) {
	dir, _ := writeTinyHF(t, true, nil)
	if err := os.WriteFile(filepath.Join(dir, hfSingleFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, _, err := LoadConfig(dir); err != nil || c.Dim != 16 {
		t.Fatalf("LoadConfig = %+v, %v", c, err)
	}
	if _, _, err := Load(dir); err == nil {
		t.Fatal("Load accepted garbage weights")
	}
}
