package data

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
)

// splitText is the reference splitting: documents between separators, trimmed, non-empty,
// with the byte offset where each (trimmed) document starts.
func splitText(text, sep string) (docs []string, offsets []int64) {
	pos := 0
	for _, part := range strings.Split(text, sep) {
		trimmed := strings.TrimSpace(part)
		if trimmed != "" {
			docs = append(docs, trimmed)
			offsets = append(offsets, int64(pos+strings.Index(part, trimmed)))
		}
		pos += len(part) + len(sep)
	}
	return docs, offsets
}

func encodeAll(tok Tokenizer, docs []string, addEOS bool) [][]int {
	out := make([][]int, len(docs))
	for i, d := range docs {
		out[i] = tok.Encode(d, true, addEOS)
	}
	return out
}

// TestPrepareTinyStoriesRoundTrip: shards written by Prepare stream back to exactly the
// tokens of tokenising the text directly, over several rotated shards and both splits.
func TestPrepareTinyStoriesRoundTrip(t *testing.T) {
	tok := loadTok512(t)
	cases := []struct {
		name      string
		file      string
		byBytes   float64
		shard     int64
		wantSplit bool
	}{
		{"cs336 sample, one split, tiny shards", "tinystories/cs336_tinystories_sample.txt", 0, 1 << 10, false},
		{"first 2 MiB, split by bytes 0.85", "tinystories/tinystories_train_first2MiB.txt", 0.85, 1 << 20, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.byBytes > 0 {
				t.Skip("-short: skipping the 2 MiB file")
			}
			in := asset(t, tc.file)
			raw, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			docs, offsets := splitText(string(raw), DefaultSeparator)
			want := encodeAll(tok, docs, false)
			out := t.TempDir()
			var progressCalls int
			m, err := Prepare(PrepareOptions{Inputs: []string{in}, Out: out, Tokenizer: tok,
				TokenizerPath: asset(t, "tinyllamas-stories260K/tok512.bin"), SplitByBytes: tc.byBytes,
				ShardBytes: tc.shard, Progress: func(PrepareProgress) { progressCalls++ }})
			if err != nil {
				t.Fatal(err)
			}
			if progressCalls == 0 {
				t.Error("progress callback never called")
			}
			// Reference split: documents starting before 85% of the bytes are train.
			var wantTrain, wantHeld [][]int
			cut := int64(tc.byBytes * float64(len(raw)))
			for i, d := range want {
				if tc.byBytes > 0 && offsets[i] >= cut {
					wantHeld = append(wantHeld, d)
				} else {
					wantTrain = append(wantTrain, d)
				}
			}
			gotTrain := readAllDocs(t, out, OpenOptions{Tokenizer: tok})
			gotHeld := readAllDocs(t, out+":heldout", OpenOptions{})
			if !reflect.DeepEqual(gotTrain, wantTrain) {
				t.Fatalf("train: %d docs read back, want %d (or tokens differ)", len(gotTrain), len(wantTrain))
			}
			if !reflect.DeepEqual(gotHeld, wantHeld) && !(len(gotHeld) == 0 && len(wantHeld) == 0) {
				t.Fatalf("heldout: %d docs read back, want %d (or tokens differ)", len(gotHeld), len(wantHeld))
			}
			if tc.wantSplit && (len(wantHeld) == 0 || len(wantTrain) == 0) {
				t.Fatal("the split left one side empty")
			}
			// The manifest agrees with what was read.
			var tokens int64
			for _, d := range wantTrain {
				tokens += int64(len(d))
			}
			tr := m.Splits[SplitTrain]
			if tr.Docs != int64(len(wantTrain)) || tr.Tokens != tokens {
				t.Errorf("manifest train = %d docs %d tokens, want %d, %d", tr.Docs, tr.Tokens, len(wantTrain), tokens)
			}
			if tc.shard == 1<<10 && len(tr.Shards) < 2 {
				t.Errorf("expected shard rotation with a 1 KiB limit, got %d shards", len(tr.Shards))
			}
			var sum int64
			for _, s := range tr.Shards {
				sum += s.Docs
			}
			if sum != tr.Docs {
				t.Errorf("shard docs sum to %d, split says %d", sum, tr.Docs)
			}
			if m.Tokenizer.VocabSize != 512 || m.Tokenizer.FileSHA256 == "" || !strings.HasPrefix(m.Tokenizer.Fingerprint, "vocab-sha256:") {
				t.Errorf("tokenizer info %+v", m.Tokenizer)
			}
			back, err := ReadManifest(out)
			if err != nil || !reflect.DeepEqual(back, m) {
				t.Errorf("manifest.json does not round-trip: %v", err)
			}
		})
	}
}

// writeParquet writes rows of (text, n) to a Parquet file with small row groups.
func writeParquet(t testing.TB, path string, texts []string, rowGroup int64) {
	t.Helper()
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "n", Type: arrow.PrimitiveTypes.Int64},
		{Name: "text", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := pqarrow.NewFileWriter(schema, f, parquet.NewWriterProperties(parquet.WithMaxRowGroupLength(rowGroup)), pqarrow.DefaultWriterProps())
	if err != nil {
		t.Fatal(err)
	}
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	for i, s := range texts {
		b.Field(0).(*array.Int64Builder).Append(int64(i))
		b.Field(1).(*array.StringBuilder).Append(s)
	}
	rec := b.NewRecord()
	defer rec.Release()
	if err := w.WriteBuffered(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestPrepareFormats(t *testing.T) {
	tok := byteTokenizer{}
	dir := t.TempDir()
	docs := []string{"alpha beta", "gamma", "delta epsilon zeta", "eta", "theta iota"}
	writeFile(t, filepath.Join(dir, "in.txt"), "  "+strings.Join(docs, "\n##\n")+"\n##\n\n")
	var jl strings.Builder
	for i, d := range docs {
		b, _ := json.Marshal(map[string]any{"id": i, "body": d})
		jl.Write(b)
		jl.WriteString("\n\n") // blank lines are skipped
	}
	writeFile(t, filepath.Join(dir, "in.jsonl"), jl.String())
	writeParquet(t, filepath.Join(dir, "in.parquet"), docs, 2)
	writeFile(t, filepath.Join(dir, "tree", "b.txt"), strings.Join(docs[2:], "##"))
	writeFile(t, filepath.Join(dir, "tree", "a.txt"), strings.Join(docs[:2], "##"))
	writeFile(t, filepath.Join(dir, "tree", "notes.md"), "ignored: not an input format")

	cases := []struct {
		name   string
		inputs []string
		opts   PrepareOptions
		want   []string
	}{
		{"txt with separator", []string{"in.txt"}, PrepareOptions{Separator: "##"}, docs},
		{"jsonl field", []string{"in.jsonl"}, PrepareOptions{TextField: "body"}, docs},
		{"parquet by row group", []string{"in.parquet"}, PrepareOptions{}, docs},
		{"directory in name order", []string{"tree"}, PrepareOptions{Separator: "##"}, docs},
		{"several files", []string{"in.parquet", "in.jsonl"}, PrepareOptions{TextField: "text"}, nil},
		{"forced format", []string{"in.txt"}, PrepareOptions{Format: "txt", Separator: "##", AddEOS: true}, docs},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			for _, in := range tc.inputs {
				opts.Inputs = append(opts.Inputs, filepath.Join(dir, in))
			}
			opts.Out = t.TempDir()
			opts.Tokenizer = tok
			if tc.want == nil { // parquet + jsonl with field "text": the jsonl has "body", so it fails
				if _, err := Prepare(opts); err == nil || !strings.Contains(err.Error(), `no field "text"`) {
					t.Fatalf("got %v, want a missing-field error", err)
				}
				return
			}
			m, err := Prepare(opts)
			if err != nil {
				t.Fatal(err)
			}
			got := readAllDocs(t, opts.Out, OpenOptions{})
			want := encodeAll(tok, tc.want, opts.AddEOS)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("read back %v\nwant %v", got, want)
			}
			if m.Splits[SplitHeldout].Docs != 0 || m.SplitRule.Kind != "none" {
				t.Errorf("no held-out split asked for, got %+v", m.Splits[SplitHeldout])
			}
		})
	}
}

func TestPrepareHeldoutFraction(t *testing.T) {
	dir := t.TempDir()
	var docs []string
	for i := range 2000 {
		docs = append(docs, fmt.Sprintf("document %d", i))
	}
	in := writeFile(t, filepath.Join(dir, "in.txt"), strings.Join(docs, DefaultSeparator))
	run := func(seed uint64) ([][]int, [][]int) {
		out := t.TempDir()
		if _, err := Prepare(PrepareOptions{Inputs: []string{in}, Out: out, Tokenizer: byteTokenizer{}, HeldoutFrac: 0.1, Seed: seed}); err != nil {
			t.Fatal(err)
		}
		return readAllDocs(t, out, OpenOptions{}), readAllDocs(t, out+":heldout", OpenOptions{})
	}
	tr1, ho1 := run(7)
	tr2, ho2 := run(7)
	_, ho3 := run(8)
	if !reflect.DeepEqual(ho1, ho2) || !reflect.DeepEqual(tr1, tr2) {
		t.Fatal("the same seed gave different splits")
	}
	if reflect.DeepEqual(ho1, ho3) {
		t.Fatal("different seeds gave the same split")
	}
	if len(tr1)+len(ho1) != len(docs) {
		t.Fatalf("%d + %d docs, want %d", len(tr1), len(ho1), len(docs))
	}
	// 2000 Bernoulli(0.1) draws: mean 200, sd ~13.4; 5 sd either side.
	if len(ho1) < 133 || len(ho1) > 267 {
		t.Fatalf("held out %d of 2000 docs at fraction 0.1", len(ho1))
	}
}

func TestPrepareErrors(t *testing.T) {
	dir := t.TempDir()
	txt := writeFile(t, filepath.Join(dir, "a.txt"), "hello<|endoftext|>world")
	blank := writeFile(t, filepath.Join(dir, "blank.txt"), " \n<|endoftext|>\n ")
	jl := writeFile(t, filepath.Join(dir, "a.jsonl"), `{"content": "x"}`+"\n")
	badjl := writeFile(t, filepath.Join(dir, "bad.jsonl"), `{"text": 3}`+"\n")
	csv := writeFile(t, filepath.Join(dir, "a.csv"), "text\nhello\n")
	pq := filepath.Join(dir, "a.parquet")
	writeParquet(t, pq, []string{"x"}, 10)
	used := t.TempDir()
	if _, err := Prepare(PrepareOptions{Inputs: []string{txt}, Out: used, Tokenizer: byteTokenizer{}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		opts PrepareOptions
		want string
	}{
		{"no inputs", PrepareOptions{}, "no input files"},
		{"missing input", PrepareOptions{Inputs: []string{filepath.Join(dir, "nope.txt")}}, "does not exist"},
		{"unknown extension", PrepareOptions{Inputs: []string{csv}}, "--format"},
		{"unknown format", PrepareOptions{Inputs: []string{txt}, Format: "csv"}, "unknown input format"},
		{"jsonl without the field", PrepareOptions{Inputs: []string{jl}}, `has no field "text"; its fields are content`},
		{"jsonl field not a string", PrepareOptions{Inputs: []string{badjl}}, "not a string"},
		{"parquet without the column", PrepareOptions{Inputs: []string{pq}, TextField: "body"}, `no column "body"; its columns are n (int64), text (utf8)`},
		{"parquet column not text", PrepareOptions{Inputs: []string{pq}, TextField: "n"}, "not a string"},
		{"empty output", PrepareOptions{Inputs: []string{blank}}, "no documents"},
		{"both split rules", PrepareOptions{Inputs: []string{txt}, HeldoutFrac: 0.1, SplitByBytes: 0.5}, "not both"},
		{"bad fraction", PrepareOptions{Inputs: []string{txt}, HeldoutFrac: 1}, "outside"},
		{"out already used", PrepareOptions{Inputs: []string{txt}, Out: used}, "--force"},
		{"no tokenizer", PrepareOptions{Inputs: []string{txt}, Tokenizer: nil}, "needs a tokenizer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			if opts.Out == "" {
				opts.Out = t.TempDir()
			}
			if tc.name != "no tokenizer" {
				opts.Tokenizer = byteTokenizer{}
			}
			_, err := Prepare(opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			if opts.Out != used {
				for _, name := range []string{ManifestName, SplitTrain, SplitHeldout} {
					if _, serr := os.Stat(filepath.Join(opts.Out, name)); serr == nil {
						t.Errorf("a failed Prepare left %s behind", name)
					}
				}
			}
		})
	}
	// Shards without a manifest (an interrupted run) are not silently mixed with new ones.
	stale := t.TempDir()
	writeFile(t, filepath.Join(stale, SplitTrain, "shard-00000.arrow"), "old")
	if _, err := Prepare(PrepareOptions{Inputs: []string{txt}, Out: stale, Tokenizer: byteTokenizer{}}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("stale shards: %v", err)
	}
	// --force replaces the earlier preparation.
	if _, err := Prepare(PrepareOptions{Inputs: []string{txt}, Out: used, Tokenizer: byteTokenizer{}, Overwrite: true}); err != nil {
		t.Fatal(err)
	}
}

func TestReadParquetRowGroups(t *testing.T) {
	// Many row groups with a null row: documents come back in order, the null one skipped.
	dir := t.TempDir()
	var texts []string
	for i := range 25 {
		texts = append(texts, fmt.Sprintf("row %d", i))
	}
	texts[3] = ""
	pq := filepath.Join(dir, "x.parquet")
	writeParquet(t, pq, texts, 4)
	var got []string
	err := readParquet(inputFile{path: pq, format: FormatParquet, size: 1}, "text", func(d document) error {
		got = append(got, d.text)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]string{}, texts[:3]...), texts[4:]...)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
}
