package cli

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ulikunitz/xz"

	"github.com/dmc-project/dmc/data"
)

func TestDataPrepareAndInspect(t *testing.T) {
	tok := filepath.Join(needAssets(t, "tinyllamas-stories260K"), "tok512.bin")
	in := filepath.Join(needAssets(t, "tinystories"), "cs336_tinystories_sample.txt")
	out := filepath.Join(t.TempDir(), "prepared")
	stdout, stderr, code := run(t, "data", "prepare", "--tokenizer", tok, "--out", out, "--split-by-bytes", "0.85", in)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"prepared ", "train ", "heldout ", "first 0.85 of the bytes", "manifest: " + filepath.Join(out, "manifest.json")} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	// Preparing into the same directory again needs --force.
	if _, stderr, code := run(t, "data", "prepare", "--tokenizer", tok, "--out", out, in); code == 0 || !strings.Contains(stderr, "--force") {
		t.Errorf("second prepare: exit %d, %q", code, stderr)
	}
	stdout, stderr, code = run(t, "data", "inspect", out, "--tokenizer", tok)
	if code != 0 {
		t.Fatalf("inspect exit %d: %s", code, stderr)
	}
	for _, want := range []string{"layout         prepared (split train)", "token column   input_ids (token ids)", `first row`, `Once upon a time there was a little boy named Ben.`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestDataInspectHuggingFace(t *testing.T) {
	dir := needAssets(t, "hf-arrow-examples")
	stdout, stderr, code := run(t, "data", "inspect", filepath.Join(dir, "elyza_tasks_100_slice10"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"hf-datasetdict (split test)", "rows           10 (the metadata declares 100)", "--text-column", "仕事の熱意"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestDataErrors(t *testing.T) {
	tok := filepath.Join(needAssets(t, "tinyllamas-stories260K"), "tok512.bin")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	jl := write("a.jsonl", `{"body": "hi"}`+"\n")
	csv := write("a.csv", "text\nhi\n")
	blank := write("blank.txt", "\n<|endoftext|>\n")
	txt := write("a.txt", "hello")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing input", []string{"--out", dir + "/o1", dir + "/nope.txt"}, "does not exist"},
		{"no inputs", []string{"--out", dir + "/o2"}, "no inputs"},
		{"unknown extension", []string{"--out", dir + "/o3", csv}, "--format txt|jsonl|parquet"},
		{"unknown format", []string{"--out", dir + "/o4", "--format", "csv", txt}, "unknown input format"},
		{"missing text field", []string{"--out", dir + "/o5", jl}, `no field "text"; its fields are body; pass the text field with --text-field`},
		{"empty output", []string{"--out", dir + "/o6", blank}, "no documents"},
		{"both split flags", []string{"--out", dir + "/o7", "--heldout-frac", "0.1", "--split-by-bytes", "0.5", txt}, "not both"},
		{"held-out files and fraction", []string{"--out", dir + "/o8", "--heldout-files", "0.1", "--heldout-frac", "0.1", txt}, "give either --heldout-frac or --heldout-files, not both"},
		{"held-out files and bytes", []string{"--out", dir + "/o9", "--split-by-bytes", "0.5", "--heldout-files", "0.1", txt}, "give either --heldout-files or --split-by-bytes, not both"},
		{"all three split flags", []string{"--out", dir + "/o10", "--split-by-bytes", "0.5", "--heldout-files", "0.1", "--heldout-frac", "0.1", txt}, "not all three"},
		{"held-out files out of range", []string{"--out", dir + "/o11", "--heldout-files", "1", txt}, "--heldout-files must be in (0, 1)"},
		{"held-out files of one file", []string{"--out", dir + "/o12", "--heldout-files", "0.5", txt}, "needs at least two input files"},
		{"no workers", []string{"--out", dir + "/o13", "--workers", "0", txt}, "--workers must be ≥ 1"},
		{"pattern without match", []string{"--out", dir + "/o14", dir + "/*.xz"}, "matches no files"},
		{"no out", []string{txt}, "--out DIR"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := run(t, append([]string{"data", "prepare", "--tokenizer", tok}, tc.args...)...)
			if code == 0 || !strings.Contains(stderr, tc.want) || !strings.HasPrefix(stderr, "dmc: ") {
				t.Fatalf("exit %d, stderr %q; want an error containing %q", code, stderr, tc.want)
			}
		})
	}
	if _, stderr, code := run(t, "data", "inspect", filepath.Join(dir, "nothing")); code == 0 || !strings.Contains(stderr, "does not exist") {
		t.Fatalf("inspect of a missing path: exit %d, %q", code, stderr)
	}
}

// TestDataPrepareCompressedCorpus: a quoted pattern over compressed files, whole files held
// out, two workers; no progress line when stderr is not a terminal and --progress is absent.
func TestDataPrepareCompressedCorpus(t *testing.T) {
	tok := filepath.Join(needAssets(t, "tinyllamas-stories260K"), "tok512.bin")
	raw, err := os.ReadFile(filepath.Join(needAssets(t, "tinystories"), "cs336_tinystories_sample.txt"))
	if err != nil {
		t.Fatal(err)
	}
	stories := strings.Split(string(raw), "<|endoftext|>")
	dir := t.TempDir()
	for i, name := range []string{"part0.txt.gz", "part1.txt.xz", "part2.txt.gz"} {
		var buf bytes.Buffer
		var w interface {
			Write([]byte) (int, error)
			Close() error
		}
		if strings.HasSuffix(name, ".xz") {
			if w, err = xz.NewWriter(&buf); err != nil {
				t.Fatal(err)
			}
		} else {
			w = gzip.NewWriter(&buf)
		}
		w.Write([]byte(strings.Join(stories[i*len(stories)/3:(i+1)*len(stories)/3], "<|endoftext|>")))
		w.Close()
		if err := os.MkdirAll(filepath.Join(dir, "corpus"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "corpus", name), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "prepared")
	stdout, stderr, code := run(t, "data", "prepare", "--tokenizer", tok, "--out", out, "--heldout-files", "0.3", "--workers", "2",
		filepath.Join(dir, "corpus", "*.txt.*"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if stderr != "" {
		t.Errorf("stderr %q, want nothing (not a terminal, no --progress)", stderr)
	}
	for _, want := range []string{"from 3 file(s)", "split: 1 of 3 files held out (fraction 0.3, seed 0): part"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	m, err := data.ReadManifest(out)
	if err != nil {
		t.Fatal(err)
	}
	if m.SplitRule.Kind != data.SplitRuleFiles || m.Sources[1].Compression != data.CompressionXz || m.Sources[0].UncompressedBytes == 0 {
		t.Errorf("manifest rule %+v, sources %+v", m.SplitRule, m.Sources)
	}
}

// TestPrepareProgressLine drives the progress line with a clock of its own: nothing before
// the first period, then at most one line per period, with the rate, counts and ETA.
func TestPrepareProgressLine(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	var buf bytes.Buffer
	p := newPrepareProgress(&buf, 2*time.Second, func() time.Time { return now })
	pr := data.PrepareProgress{File: "a.txt.xz", FileIndex: 0, Files: 4, BytesDone: 10e6, BytesTotal: 40e6, Docs: 1200, Tokens: 3_400_000}
	steps := []struct {
		at   time.Duration
		want string // "" = nothing drawn
	}{
		{time.Second, ""},
		{2 * time.Second, "\r   25.0% read (9.54 MiB of 38.15 MiB, 5.0 MB/s), file 1/4, 1.2K documents, 3.40M tokens, ETA 6s   "},
		{3 * time.Second, ""},
		{5 * time.Second, "\r   25.0% read (9.54 MiB of 38.15 MiB, 2.0 MB/s), file 1/4, 1.2K documents, 3.40M tokens, ETA 15s   "},
	}
	for _, st := range steps {
		now = start.Add(st.at)
		buf.Reset()
		p.update(pr)
		if buf.String() != st.want {
			t.Errorf("at %v: drew %q, want %q", st.at, buf.String(), st.want)
		}
	}
	buf.Reset()
	p.finish()
	if buf.String() != "\n" {
		t.Errorf("finish wrote %q", buf.String())
	}
	if line := prepareLine(data.PrepareProgress{Files: 2, FileIndex: 2, BytesDone: 5, BytesTotal: 5}, time.Second); !strings.Contains(line, "100.0% read") || strings.Contains(line, "ETA") || !strings.Contains(line, "file 2/2") {
		t.Errorf("final line %q", line)
	}
	if isTerminal(&buf) {
		t.Error("a buffer is not a terminal")
	}
}
