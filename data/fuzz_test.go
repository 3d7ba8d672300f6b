package data

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets for every parser of outside input in this package: Arrow IPC files and
// streams, JSON lines, plain text (with DetectFormat), Parquet, manifests and Hugging Face
// state.json. Each asserts no panic and, for accepted input, basic invariants; where two
// readers can read the same bytes (sequential and indexed by OpenWith) they must agree.
// Seeds are small real files: fixtures built here and, when present, the shared assets.

// fuzzSeedFile adds the first max bytes of a shared asset as a seed, when present.
func fuzzSeedFile(f *testing.F, rel string, max int) {
	b, err := os.ReadFile(filepath.Join(assets, rel))
	if err != nil {
		return
	}
	f.Add(b[:min(len(b), max)])
}

// checkDataset streams everything an opened dataset offers, checking sizes.
func checkDataset(t *testing.T, path string) {
	ds, err := OpenWith(path, OpenOptions{AnyColumns: true})
	if err != nil {
		return
	}
	if ds.NumBatches() < 0 {
		t.Fatalf("NumBatches %d", ds.NumBatches())
	}
	files, streams := ds.Formats()
	if files < 0 || streams < 0 || files+streams > len(ds.Shards()) {
		t.Fatalf("Formats %d, %d of %d shards", files, streams, len(ds.Shards()))
	}
	rows, err := ds.CountRows()
	if rows < 0 {
		t.Fatalf("CountRows %d", rows)
	}
	if err != nil {
		return
	}
	if _, isText := ds.Column(); isText {
		if ds, err = OpenWith(path, OpenOptions{Tokenizer: byteTokenizer{}}); err != nil {
			return
		}
	}
	if ds.ColumnErr() != nil {
		return
	}
	var docs int64
	for ids, err := range ds.Documents() {
		if err != nil {
			return
		}
		docs++
		_ = len(ids)
	}
	if docs != rows {
		t.Fatalf("%d documents but %d rows", docs, rows)
	}
	p, err := NewPacker(ds, PackerOptions{SeqLen: 4, Shuffle: true, Seed: 1, Epochs: 1})
	if err != nil {
		return
	}
	defer p.Close()
	n := 0
	for w, err := range p.Windows() {
		if err != nil {
			return
		}
		if len(w.Tokens) != 5 {
			t.Fatalf("window of %d tokens", len(w.Tokens))
		}
		if n++; n > 1000 {
			break
		}
	}
}

func fuzzArrowSeeds(f *testing.F, stream bool) {
	dir := f.TempDir()
	tokens := tokenRecord(f, TokenColumn, false, false, [][]int{{1, 5, 6}, nil, {1, 2}})
	defer tokens.Release()
	large := tokenRecord(f, TokenColumn, true, true, [][]int{{1, 9}})
	defer large.Release()
	text := stringRecord(f, []string{"title", "text"}, [][]string{{"a", "b"}, {"hello there", "x"}}, true)
	defer text.Release()
	write := func(name string, fn func(path string)) {
		p := filepath.Join(dir, name)
		fn(p)
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	write("tokens.arrow", func(p string) { writeArrow(f, p, stream, tokens, tokens) })
	write("large.arrow", func(p string) { writeArrow(f, p, stream, large) })
	write("text.arrow", func(p string) { writeArrow(f, p, stream, text) })
	if !stream {
		// A real prepared shard.
		out := filepath.Join(dir, "prepared")
		if _, err := Prepare(PrepareOptions{Inputs: []string{"testdata/four_stories.txt"}, Out: out, Tokenizer: byteTokenizer{}}); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(out, "train", "shard-00000.arrow"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	} else {
		fuzzSeedFile(f, "hf-arrow-examples/elyza_tasks_100_slice10/test/data-00000-of-00001.arrow", 1<<20)
		fuzzSeedFile(f, "hf-arrow-examples/proxy_qa/data-00000-of-00001.arrow", 1<<20)
	}
}

// FuzzArrowIPCFile reads arbitrary bytes as an Arrow IPC file (footer format).
func FuzzArrowIPCFile(f *testing.F) {
	fuzzArrowSeeds(f, false)
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "x.arrow")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		checkDataset(t, p)
	})
}

// FuzzArrowIPCStream reads arbitrary bytes as an Arrow IPC stream (what Hugging Face
// save_to_disk writes), through the offset index OpenWith builds.
func FuzzArrowIPCStream(f *testing.F) {
	fuzzArrowSeeds(f, true)
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "data-00000-of-00001.arrow")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		checkDataset(t, p)
	})
}

// collectDocs reads documents with fn into a slice.
func collectDocs(read func(func(document) error) error) ([]document, error) {
	var docs []document
	err := read(func(d document) error {
		docs = append(docs, d)
		return nil
	})
	return docs, err
}

// sameAsOpenWith checks that OpenWith (which indexes the file in document groups and reads
// them back one by one) gives exactly the documents of the sequential reader, and fails
// exactly when it fails. A text or JSON lines file is read whole by OpenWith, so it fails
// at once; a Parquet file is opened from its metadata alone (lazy), so corrupt data in a
// row group shows only when its documents are read: then Documents must fail after no more
// documents than the sequential reader gave.
func sameAsOpenWith(t *testing.T, path string, opts OpenOptions, docs []document, seqErr error, lazy bool) {
	opts.Tokenizer = byteTokenizer{}
	ds, err := OpenWith(path, opts)
	if (err != nil) != (seqErr != nil) && !(lazy && err == nil) {
		t.Fatalf("OpenWith error %v, sequential reader error %v", err, seqErr)
	}
	if err != nil {
		return
	}
	var i int
	for ids, err := range ds.Documents() {
		if err != nil {
			if seqErr != nil {
				return // both fail (lazy: when the data is read)
			}
			t.Fatalf("document %d: %v", i, err)
		}
		if i >= len(docs) {
			t.Fatalf("OpenWith gives more than %d documents", len(docs))
		}
		want := byteTokenizer{}.Encode(docs[i].text, true, false)
		got := make([]int, len(ids))
		for j, v := range ids {
			got[j] = int(v)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("document %d differs", i)
		}
		i++
	}
	if seqErr != nil {
		t.Fatalf("OpenWith reads %d documents without the sequential reader's error %v", i, seqErr)
	}
	if i != len(docs) {
		t.Fatalf("OpenWith gives %d documents, the reader %d", i, len(docs))
	}
}

// FuzzReadJSONL reads arbitrary bytes as JSON lines: documents are non-empty, their offsets
// increase and start a line, and OpenWith agrees.
func FuzzReadJSONL(f *testing.F) {
	f.Add([]byte(`{"text": "hello"}` + "\n" + `{"text": "world", "id": 2}` + "\n"))
	f.Add([]byte("\n\n" + `{"text": ""}` + "\r\n" + `{"text": "é\u00e9"}`))
	f.Add([]byte(`{"body": "x"}`))
	f.Add([]byte(`{"text": 3}` + "\n"))
	f.Add([]byte(`[1, 2]` + "\n"))
	fuzzSeedFile(f, "piqa/valid.jsonl", 2<<10)
	f.Fuzz(func(t *testing.T, b []byte) {
		docs, err := collectDocs(func(fn func(document) error) error {
			return readJSONLFrom(bytes.NewReader(b), "fuzz.jsonl", 0, 1, "text", fn)
		})
		last := int64(-1)
		for _, d := range docs {
			if d.text == "" || d.offset <= last || d.offset >= int64(len(b)) || d.line < 1 {
				t.Fatalf("bad document %+v after offset %d", d, last)
			}
			if d.offset > 0 && b[d.offset-1] != '\n' {
				t.Fatalf("document at %d does not start a line", d.offset)
			}
			last = d.offset
		}
		p := filepath.Join(t.TempDir(), "x.jsonl")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		DetectFormat(p)
		sameAsOpenWith(t, p, OpenOptions{}, docs, err, false)
	})
}

// FuzzReadText reads arbitrary bytes as plain text with a fuzzed separator, and sniffs them
// with DetectFormat: documents are trimmed, non-empty UTF-8 found at their offsets, binary
// data is refused with an offset inside the data, and OpenWith agrees.
func FuzzReadText(f *testing.F) {
	four, err := os.ReadFile("testdata/four_stories.txt")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(four, DefaultSeparator)
	f.Add([]byte("a##b## ##c"), "##")
	f.Add([]byte("\uFEFF = Title = \n\n text \xff"), "\n\n")
	f.Add([]byte("x\x00y"), "|")
	for _, rel := range []string{"wikitext-2-valid/wiki.valid.tokens", "tinystories/cs336_tinystories_sample.txt"} {
		if b, err := os.ReadFile(filepath.Join(assets, rel)); err == nil {
			f.Add(b[:min(len(b), 2<<10)], DefaultSeparator)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, sep string) {
		if sep == "" || len(sep) > 64 {
			return
		}
		p := filepath.Join(t.TempDir(), "x.txt")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := DetectFormat(p); err != nil {
			if be, ok := err.(*BinaryError); ok && (be.Offset < 0 || be.Offset >= int64(len(b))) {
				t.Fatalf("binary offset %d outside %d bytes", be.Offset, len(b))
			}
		}
		docs, err := collectDocs(func(fn func(document) error) error {
			return readTxtFrom(bytes.NewReader(b), p, 0, sep, fn)
		})
		if be, ok := err.(*BinaryError); ok && (be.Offset < 0 || be.Offset >= int64(len(b)) || b[be.Offset] != be.Byte) {
			t.Fatalf("binary error %+v does not point into the data", be)
		}
		last := int64(-1)
		for _, d := range docs {
			if d.text == "" || d.text != strings.TrimSpace(d.text) || !utf8.ValidString(d.text) || d.offset <= last {
				t.Fatalf("bad document %q at %d (after %d)", d.text, d.offset, last)
			}
			if !bytes.HasPrefix(b[d.offset:], []byte(d.text)) {
				t.Fatalf("document %q is not at offset %d", d.text, d.offset)
			}
			last = d.offset
		}
		sameAsOpenWith(t, p, OpenOptions{Separator: sep}, docs, err, false)
	})
}

// FuzzReadParquet reads arbitrary bytes as Parquet (default column, then "text"); OpenWith
// agrees with the sequential reader.
func FuzzReadParquet(f *testing.F) {
	dir := f.TempDir()
	for i, tc := range []struct {
		texts []string
		rg    int64
	}{{[]string{"a", "bb", ""}, 2}, {[]string{"one row"}, 10}, {[]string{"x", "y", "z", "w", "v"}, 1}} {
		p := filepath.Join(dir, string(rune('a'+i))+".parquet")
		writeParquet(f, p, tc.texts, tc.rg)
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "x.parquet")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		in := inputFile{path: p, format: FormatParquet, size: int64(len(b))}
		for _, column := range []string{"", "text"} {
			docs, err := collectDocs(func(fn func(document) error) error { return readParquet(in, column, fn) })
			for _, d := range docs {
				if d.text == "" || d.offset < 0 || d.offset > in.size {
					t.Fatalf("bad document %+v", d)
				}
			}
			if column == "" {
				sameAsOpenWith(t, p, OpenOptions{}, docs, err, true)
			}
		}
	})
}

// FuzzReadManifest parses arbitrary bytes as a prepared directory's manifest.json. An
// accepted manifest survives a write and read unchanged; its file list stays inside the
// directory or --force refuses it; opening the directory does not panic.
func FuzzReadManifest(f *testing.F) {
	golden, err := os.ReadFile("testdata/four_stories.manifest.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(golden)
	f.Add([]byte(`{"format_version": 1, "splits": {"train": {"docs": 1, "shards": [{"file": "../x.arrow"}]}}}`))
	f.Add([]byte(`{"format_version": 2}`))
	f.Add([]byte(`{"format_version": 1, "splits": null, "sources": [{"path": "a", "bytes": -1}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		out := filepath.Join(dir, "prepared")
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, ManifestName), b, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := ReadManifest(out)
		if err != nil {
			return
		}
		files := m.Files()
		if len(files) == 0 || files[len(files)-1] != ManifestName {
			t.Fatalf("Files %v does not end with the manifest", files)
		}
		again := filepath.Join(dir, "again")
		os.Mkdir(again, 0o755)
		if err := writeManifest(again, m); err != nil {
			t.Fatal(err)
		}
		m2, err := ReadManifest(again)
		if err != nil {
			t.Fatalf("a written manifest does not read back: %v", err)
		}
		if !reflect.DeepEqual(normManifest(m), normManifest(m2)) {
			t.Fatalf("manifest changed in a round trip:\n%+v\n%+v", m, m2)
		}
		if old, err := checkOutDir(out, true); err == nil {
			for _, f := range old {
				if !filepath.IsLocal(filepath.FromSlash(f)) {
					t.Fatalf("--force would remove %q, outside the directory", f)
				}
			}
		}
		checkDataset(t, out)
		checkDataset(t, out+":"+SplitHeldout)
	})
}

// normManifest makes nil and empty collections alike (JSON null vs [] round trips).
func normManifest(m *Manifest) *Manifest {
	c := *m
	if len(c.Sources) == 0 {
		c.Sources = nil
	}
	if len(c.Splits) == 0 {
		c.Splits = nil
	}
	for k, s := range c.Splits {
		if len(s.Shards) == 0 {
			s.Shards = nil
			c.Splits[k] = s
		}
	}
	return &c
}

// FuzzHFStateJSON parses arbitrary bytes as the state.json of a Hugging Face save_to_disk
// folder (which names the Arrow files) and as a DatasetDict's dataset_dict.json.
func FuzzHFStateJSON(f *testing.F) {
	b, err := os.ReadFile(filepath.Join(assets, "hf-arrow-examples/proxy_qa/state.json"))
	if err != nil {
		b = []byte(`{"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": null}`)
	}
	f.Add(b, []byte(`{"splits": ["train"]}`))
	f.Add([]byte(`{"_data_files": [{"filename": "../../etc/passwd"}], "_split": "train"}`), []byte(`{"splits": ["train", "test"]}`))
	f.Add([]byte(`{"_data_files": []}`), []byte(`{"splits": null}`))
	text := stringRecord(f, []string{"text"}, [][]string{{"a row", "another"}}, false)
	defer text.Release()
	shard := filepath.Join(f.TempDir(), "s.arrow")
	writeArrow(f, shard, true, text)
	shardBytes, err := os.ReadFile(shard)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, state, dict []byte) {
		root := t.TempDir()
		for _, d := range []string{root, filepath.Join(root, "train")} {
			os.WriteFile(filepath.Join(d, "data-00000-of-00001.arrow"), shardBytes, 0o644)
		}
		ds := filepath.Join(root, "train")
		os.WriteFile(filepath.Join(ds, "state.json"), state, 0o644)
		os.WriteFile(filepath.Join(ds, "dataset_info.json"), dict, 0o644)
		checkDataset(t, ds)
		os.WriteFile(filepath.Join(root, "dataset_dict.json"), dict, 0o644)
		checkDataset(t, root)
	})
}
