package data

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// corpusTree writes a small corpus with compressed files, nested folders, hidden entries and
// a file that is no input format, under dir/corpus; it returns each file's documents.
func corpusTree(t *testing.T, dir string) map[string][]string {
	t.Helper()
	docs := map[string][]string{}
	put := func(rel string, compression string, ds []string, jsonl bool) {
		var b []byte
		if jsonl {
			var buf bytes.Buffer
			for _, d := range ds {
				fmt.Fprintf(&buf, "{\"text\": %q}\n", d)
			}
			b = buf.Bytes()
		} else {
			b = []byte(strings.Join(ds, DefaultSeparator))
		}
		if compression != "" {
			b = compressBytes(t, compression, b)
		}
		writeFile(t, filepath.Join(dir, "corpus", filepath.FromSlash(rel)), string(b))
		docs[rel] = ds
	}
	put("b.txt", "", []string{"b one", "b two"}, false)
	put("a.txt.gz", CompressionGzip, []string{"a one"}, false)
	put("sub/c.jsonl.xz", CompressionXz, []string{"c one", "c two", "c three"}, true)
	put("sub/deep/d.txt.zst", CompressionZstd, []string{"d one"}, false)
	put("sub2.txt", "", []string{"sub2 one"}, false)
	put(".hidden/e.txt", "", []string{"hidden"}, false)
	put(".f.txt", "", []string{"hidden too"}, false)
	put("notes.md", "", []string{"notes, no input format by name"}, false)
	return docs
}

func TestExpandInputsOrder(t *testing.T) {
	dir := t.TempDir()
	corpusTree(t, dir)
	t.Chdir(dir)
	cases := []struct {
		name    string
		inputs  []string
		want    []string
		wantErr string
	}{
		{"folder: recursive, sorted, hidden and unknown skipped", []string{"corpus"},
			[]string{"corpus/a.txt.gz", "corpus/b.txt", "corpus/sub/c.jsonl.xz", "corpus/sub/deep/d.txt.zst", "corpus/sub2.txt"}, ""},
		{"star in one folder", []string{"corpus/*.txt"}, []string{"corpus/b.txt", "corpus/sub2.txt"}, ""},
		{"double star at any depth, zero included", []string{"corpus/**/*.txt*"},
			[]string{"corpus/a.txt.gz", "corpus/b.txt", "corpus/sub/deep/d.txt.zst", "corpus/sub2.txt"}, ""},
		{"double star last: every file", []string{"corpus/sub/**"}, []string{"corpus/sub/c.jsonl.xz", "corpus/sub/deep/d.txt.zst"}, ""},
		{"double star takes unknown names too (by content)", []string{"corpus/**/*.md"}, []string{"corpus/notes.md"}, ""},
		{"question mark and folders", []string{"corpus/s?b/*"}, []string{"corpus/sub/c.jsonl.xz"}, ""},
		{"class", []string{"corpus/[ab].txt*"}, []string{"corpus/a.txt.gz", "corpus/b.txt"}, ""},
		{"hidden by a dot pattern", []string{"corpus/.*"}, []string{"corpus/.f.txt"}, ""},
		{"pattern in the first segment", []string{"c*/b.txt"}, []string{"corpus/b.txt"}, ""},
		{"absolute pattern", []string{filepath.Join(dir, "corpus", "sub", "*", "*.zst")}, []string{filepath.Join(dir, "corpus/sub/deep/d.txt.zst")}, ""},
		{"inputs keep their order, each sorted", []string{"corpus/sub2.txt", "corpus/*.gz", "corpus/sub"},
			[]string{"corpus/sub2.txt", "corpus/a.txt.gz", "corpus/sub/c.jsonl.xz", "corpus/sub/deep/d.txt.zst"}, ""},
		{"no match", []string{"corpus/*.parquet"}, nil, "pattern corpus/*.parquet matches no files"},
		{"bad pattern", []string{"corpus/[a"}, nil, `bad pattern "corpus/[a"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := expandInputs(tc.inputs, "")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var paths []string
			for _, in := range got {
				paths = append(paths, filepath.ToSlash(in.path))
			}
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				want[i] = filepath.ToSlash(w)
			}
			if !reflect.DeepEqual(paths, want) {
				t.Fatalf("got %q\nwant %q", paths, want)
			}
		})
	}
	// A folder whose data is only in archives says so.
	writeFile(t, filepath.Join(dir, "zips", "x.zip"), "PK\x03\x04")
	if _, err := expandInputs([]string{"zips"}, ""); err == nil || !strings.Contains(err.Error(), "archive(s) dmc does not read, such as zips/x.zip") {
		t.Fatalf("folder of zips: %v", err)
	}
	writeFile(t, filepath.Join(dir, "zips", "y.txt.zip"), "PK\x03\x04")
	if _, err := expandInputs([]string{"zips"}, ""); err == nil || !strings.Contains(err.Error(), "y.txt.zip is a zip archive") {
		t.Fatalf("data in a zip in a folder: %v", err)
	}
}

// TestPrepareFolderDocuments: the documents of a folder come out in sorted path order,
// compressed or not, and a pattern gives the same as the folder it spells out.
func TestPrepareFolderDocuments(t *testing.T) {
	dir := t.TempDir()
	docs := corpusTree(t, dir)
	var want []string
	for _, rel := range []string{"a.txt.gz", "b.txt", "sub/c.jsonl.xz", "sub/deep/d.txt.zst", "sub2.txt"} {
		want = append(want, docs[rel]...)
	}
	for _, inputs := range [][]string{
		{filepath.Join(dir, "corpus")},
		{filepath.Join(dir, "corpus", "[ab]*"), filepath.Join(dir, "corpus", "sub", "**", "*.*"), filepath.Join(dir, "corpus", "sub2.*")},
	} {
		out := t.TempDir()
		m, err := Prepare(PrepareOptions{Inputs: inputs, Out: out, Tokenizer: byteTokenizer{}})
		if err != nil {
			t.Fatal(err)
		}
		if got := readAllDocs(t, out, OpenOptions{}); !reflect.DeepEqual(got, encodeAll(byteTokenizer{}, want, false)) {
			t.Fatalf("%v: documents out of order or missing", inputs)
		}
		if m.Format != "mixed" || len(m.Sources) != 5 || m.Sources[0].Compression != CompressionGzip || m.Sources[1].Compression != "" {
			t.Fatalf("manifest %q, sources %+v", m.Format, m.Sources)
		}
	}
}

// heldoutNames prepares inputs with the files rule and returns the held-out file names.
func heldoutNames(t *testing.T, inputs []string, frac float64, seed uint64) []string {
	t.Helper()
	m, err := Prepare(PrepareOptions{Inputs: inputs, Out: t.TempDir(), Tokenizer: byteTokenizer{}, HeldoutFiles: frac, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	if m.SplitRule != (SplitRule{Kind: SplitRuleFiles, Value: frac, Seed: seed}) {
		t.Fatalf("rule %+v", m.SplitRule)
	}
	var held []string
	var heldDocs int64
	for _, s := range m.Sources {
		switch s.Split {
		case SplitHeldout:
			held = append(held, filepath.Base(s.Path))
			heldDocs += s.Docs
		case SplitTrain:
		default:
			t.Fatalf("source %+v has no split", s)
		}
	}
	if m.Splits[SplitHeldout].Docs != heldDocs {
		t.Fatalf("held-out split has %d docs, its files %d", m.Splits[SplitHeldout].Docs, heldDocs)
	}
	slices.Sort(held)
	return held
}

func TestPrepareHeldoutFiles(t *testing.T) {
	// The same ten files in two places, named alike.
	dirs := []string{t.TempDir(), filepath.Join(t.TempDir(), "elsewhere", "deeper")}
	for _, d := range dirs {
		for i := range 10 {
			writeFile(t, filepath.Join(d, "books", fmt.Sprintf("book%02d.txt", i)), fmt.Sprintf("book %d, part 1<|endoftext|>book %d, part 2", i, i))
		}
	}
	folder := filepath.Join(dirs[0], "books")
	base := heldoutNames(t, []string{folder}, 0.3, 7)
	if len(base) != 3 {
		t.Fatalf("held out %v, want 3 of 10 files", base)
	}
	var reversed []string
	for i := 9; i >= 0; i-- {
		reversed = append(reversed, filepath.Join(folder, fmt.Sprintf("book%02d.txt", i)))
	}
	for name, inputs := range map[string][]string{
		"same again":           {folder},
		"another location":     {filepath.Join(dirs[1], "books")},
		"a pattern":            {filepath.Join(folder, "book*.txt")},
		"files in other order": reversed,
	} {
		if got := heldoutNames(t, inputs, 0.3, 7); !reflect.DeepEqual(got, base) {
			t.Errorf("%s: held out %v, want %v", name, got, base)
		}
	}
	differs := false
	for seed := uint64(8); seed < 12 && !differs; seed++ {
		differs = !reflect.DeepEqual(heldoutNames(t, []string{folder}, 0.3, seed), base)
	}
	if !differs {
		t.Error("four other seeds hold out the same files")
	}
	if got := heldoutNames(t, []string{folder}, 0.01, 7); len(got) != 1 {
		t.Errorf("fraction 0.01 of 10 files held out %v, want at least one", got)
	}
	if got := heldoutNames(t, reversed[:2], 0.9, 7); len(got) != 1 {
		t.Errorf("fraction 0.9 of 2 files held out %v, want one: train keeps one", got)
	}

	one := reversed[0]
	for _, tc := range []struct {
		name string
		opts PrepareOptions
		want string
	}{
		{"with a document fraction", PrepareOptions{Inputs: []string{folder}, HeldoutFiles: 0.1, HeldoutFrac: 0.1}, "give either a held-out fraction of files or a held-out fraction of documents, not both"},
		{"with split by bytes", PrepareOptions{Inputs: []string{folder}, HeldoutFiles: 0.1, SplitByBytes: 0.9}, "give either a held-out fraction of files or split-by-bytes, not both"},
		{"out of range", PrepareOptions{Inputs: []string{folder}, HeldoutFiles: 1}, "outside [0, 1)"},
		{"one file", PrepareOptions{Inputs: []string{one}, HeldoutFiles: 0.1}, "needs at least two input files"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Out, tc.opts.Tokenizer = t.TempDir(), byteTokenizer{}
			if _, err := Prepare(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestPrepareWorkers: tokenising on several workers gives byte-identical shards and manifest
// to one worker, for each split rule, with shard rotation; a bad byte late in the input is
// the same error.
func TestPrepareWorkers(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "in", "a.txt"), strings.Join(manyDocs(2500, "a"), DefaultSeparator))
	writeFile(t, filepath.Join(dir, "in", "b.txt.gz"), string(compressBytes(t, CompressionGzip, []byte(strings.Join(manyDocs(1200, "b"), DefaultSeparator)))))
	var jl bytes.Buffer
	for _, d := range manyDocs(800, "c") {
		fmt.Fprintf(&jl, "{\"text\": %q}\n", d)
	}
	writeFile(t, filepath.Join(dir, "in", "c.jsonl"), jl.String())
	// One document of several MiB, alone in its batch.
	writeFile(t, filepath.Join(dir, "in", "d.txt"), strings.Repeat("a long book. ", 100_000))
	bad := writeFile(t, filepath.Join(dir, "bad.txt"), strings.Repeat("fine<|endoftext|>", 5000)+"bad \xff byte")
	in := filepath.Join(dir, "in")

	type tokCase struct {
		name string
		tok  func(t *testing.T) Tokenizer
	}
	toks := []tokCase{{"byte tokenizer", func(*testing.T) Tokenizer { return byteTokenizer{} }}, {"tok512", func(t *testing.T) Tokenizer { return loadTok512(t) }}}
	rules := []struct {
		name string
		opts PrepareOptions
	}{
		{"held-out fraction", PrepareOptions{HeldoutFrac: 0.1, Seed: 5}},
		{"split by bytes", PrepareOptions{SplitByBytes: 0.6}},
		{"held-out files", PrepareOptions{HeldoutFiles: 0.25, Seed: 1}},
	}
	for _, tk := range toks {
		for _, rule := range rules {
			t.Run(tk.name+", "+rule.name, func(t *testing.T) {
				tok := tk.tok(t)
				var outs []string
				for _, workers := range []int{1, 4} {
					opts := rule.opts
					opts.Inputs, opts.Out, opts.Tokenizer, opts.Workers, opts.ShardBytes = []string{in}, t.TempDir(), tok, workers, 64<<10
					if _, err := Prepare(opts); err != nil {
						t.Fatal(err)
					}
					outs = append(outs, opts.Out)
				}
				samePrepared(t, outs[1], outs[0])
				m1, _ := os.ReadFile(filepath.Join(outs[0], ManifestName))
				m4, _ := os.ReadFile(filepath.Join(outs[1], ManifestName))
				if !bytes.Equal(m1, m4) {
					t.Fatalf("manifests differ:\n%s\n%s", m1, m4)
				}
				if m, _ := ReadManifest(outs[0]); len(m.Splits[SplitTrain].Shards) < 2 {
					t.Fatalf("no shard rotation: %+v", m.Splits[SplitTrain])
				}
			})
		}
	}
	var errs []string
	for _, workers := range []int{1, 4} {
		_, err := Prepare(PrepareOptions{Inputs: []string{in, bad}, Out: t.TempDir(), Tokenizer: byteTokenizer{}, Workers: workers})
		if err == nil {
			t.Fatal("no error for invalid UTF-8")
		}
		errs = append(errs, err.Error())
	}
	if errs[0] != errs[1] || !strings.Contains(errs[0], "bad.txt is not text: at byte offset") {
		t.Fatalf("errors %q", errs)
	}
}
