package data

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// TestOpenHuggingFaceExamples reads the three real save_to_disk outputs (Arrow IPC stream
// format). Row counts were checked independently: proxy_qa has ids 0..99, raft_nested
// holds seed_task_0..seed_task_262 (grep of the raw file), and the ELYZA slice has 10 rows
// while its copied dataset_info.json still declares the parent's 100.
func TestOpenHuggingFaceExamples(t *testing.T) {
	root := asset(t, "hf-arrow-examples")
	cases := []struct {
		path       string
		layout     string
		split      string
		rows       int64
		declared   int64
		columns    []string
		field      string
		row0       string
		textColumn string
	}{
		{"proxy_qa", LayoutHFDataset, "", 100, -1,
			[]string{"meta_question", "wiki_cover", "time_sensitive", "id", "domain"}, "domain", "CS", "meta_question"},
		{"raft_nested", LayoutArrowDir, "", 263, -1,
			[]string{"id", "type", "question", "context", "oracle_context", "cot_answer", "instruction"},
			"question", "What did the two main things the author worked on before college involve?", "question"},
		{"raft_nested/data-00000-of-00001.arrow", LayoutArrowFile, "", 263, -1,
			[]string{"id", "type", "question", "context", "oracle_context", "cot_answer", "instruction"}, "id", "seed_task_0", "id"},
		{"elyza_tasks_100_slice10", LayoutDatasetDict, "test", 10, 100,
			[]string{"input", "output", "eval_aspect"}, "input", "仕事の熱意を取り戻すためのアイデアを5つ挙げてください。", "input"},
		{"elyza_tasks_100_slice10:test", LayoutDatasetDict, "test", 10, 100,
			[]string{"input", "output", "eval_aspect"}, "input", "仕事の熱意を取り戻すためのアイデアを5つ挙げてください。", "output"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			path := filepath.Join(root, tc.path)
			// Without a text column none of these has a usable token column.
			if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "has no usable column") ||
				!strings.Contains(err.Error(), "--text-column") {
				t.Fatalf("Open without a column: %v", err)
			}
			ds, err := OpenWith(path, OpenOptions{AnyColumns: true})
			if err != nil {
				t.Fatal(err)
			}
			if ds.Layout != tc.layout || ds.Split != tc.split || ds.DeclaredRows != tc.declared {
				t.Errorf("layout %q split %q declared %d, want %q %q %d", ds.Layout, ds.Split, ds.DeclaredRows, tc.layout, tc.split, tc.declared)
			}
			var names []string
			for _, f := range ds.Schema.Fields() {
				names = append(names, f.Name)
			}
			if !reflect.DeepEqual(names, tc.columns) {
				t.Errorf("columns %v, want %v", names, tc.columns)
			}
			rows, err := ds.CountRows()
			if err != nil || rows != tc.rows {
				t.Fatalf("%d rows (%v), want %d", rows, err, tc.rows)
			}
			var first string
			var values []string
			for rec, err := range ds.Records() {
				if err != nil {
					t.Fatal(err)
				}
				col := rec.Column(ds.Schema.FieldIndices(tc.field)[0])
				if first == "" {
					first = col.ValueStr(0)
				}
				tcol := rec.Column(ds.Schema.FieldIndices(tc.textColumn)[0]).(*array.String)
				for i := 0; i < tcol.Len(); i++ {
					values = append(values, tcol.Value(i))
				}
			}
			if first != tc.row0 {
				t.Errorf("row 0 %s = %q, want %q", tc.field, first, tc.row0)
			}
			// A text column tokenised on the fly gives one document per row, BOS first.
			tok := byteTokenizer{}
			docs := readAllDocs(t, path, OpenOptions{TextColumn: tc.textColumn, Tokenizer: tok})
			if int64(len(docs)) != tc.rows {
				t.Fatalf("%d documents, want %d", len(docs), tc.rows)
			}
			for i, d := range docs {
				if !reflect.DeepEqual(d, tok.Encode(values[i], true, false)) {
					t.Fatalf("document %d differs from tokenising row %d", i, i)
				}
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct{ path, column, want string }{
			{"raft_nested", "context", `column "context" is struct`},
			{"raft_nested", "nope", `no column "nope"; its columns are id (utf8)`},
			{"elyza_tasks_100_slice10:train", "", `no split "train"; its splits are test`},
			{"proxy_qa:train", "", "without splits"},
			{"proxy_qa", "meta_question", "give a tokenizer"},
		} {
			_, err := OpenWith(filepath.Join(root, tc.path), OpenOptions{TextColumn: tc.column})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s column %q: got %v, want %q", tc.path, tc.column, err, tc.want)
			}
		}
	})
}

// writeArrow writes records to path in the IPC file or stream format.
func writeArrow(t testing.TB, path string, stream bool, recs ...arrow.Record) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	schema := recs[0].Schema()
	type writer interface {
		Write(arrow.Record) error
		Close() error
	}
	var w writer
	if stream {
		w = ipc.NewWriter(f, ipc.WithSchema(schema))
	} else if w, err = ipc.NewFileWriter(f, ipc.WithSchema(schema)); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// tokenRecord builds a one-column record of token lists with the given list/value types.
func tokenRecord(t testing.TB, name string, large, int64s bool, docs [][]int) arrow.Record {
	t.Helper()
	elem := arrow.DataType(arrow.PrimitiveTypes.Int32)
	if int64s {
		elem = arrow.PrimitiveTypes.Int64
	}
	var b array.ListLikeBuilder
	if large {
		b = array.NewLargeListBuilder(memory.DefaultAllocator, elem)
	} else {
		b = array.NewListBuilder(memory.DefaultAllocator, elem)
	}
	defer b.Release()
	for _, d := range docs {
		if d == nil {
			b.AppendNull()
			continue
		}
		b.Append(true)
		for _, v := range d {
			switch vb := b.ValueBuilder().(type) {
			case *array.Int32Builder:
				vb.Append(int32(v))
			case *array.Int64Builder:
				vb.Append(int64(v))
			}
		}
	}
	arr := b.NewArray()
	defer arr.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: name, Type: arr.DataType(), Nullable: true}}, nil)
	return array.NewRecord(schema, []arrow.Array{arr}, int64(arr.Len()))
}

func TestOpenFileAndStreamFormats(t *testing.T) {
	batches := [][][]int{{{1, 5, 6}, {1, 7}}, {{1, 8, 9, 10}}, {nil, {1, 11}}, {}}
	var want [][]int
	for _, b := range batches {
		for _, d := range b {
			if d == nil {
				d = []int{}
			}
			want = append(want, d)
		}
	}
	for _, stream := range []bool{false, true} {
		for _, large := range []bool{false, true} {
			for _, int64s := range []bool{false, true} {
				dir := t.TempDir()
				var recs []arrow.Record
				for _, b := range batches {
					recs = append(recs, tokenRecord(t, TokenColumn, large, int64s, b))
				}
				// Two shards in a directory: the same batches twice.
				writeArrow(t, filepath.Join(dir, "a.arrow"), stream, recs...)
				writeArrow(t, filepath.Join(dir, "b.arrow"), stream, recs...)
				ds, err := Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				if ds.NumBatches() != 2*len(batches) {
					t.Errorf("stream=%v: %d batches, want %d", stream, ds.NumBatches(), 2*len(batches))
				}
				got := readAllDocs(t, dir, OpenOptions{})
				if !reflect.DeepEqual(got, append(append([][]int{}, want...), want...)) {
					t.Errorf("stream=%v large=%v int64=%v: got %v", stream, large, int64s, got)
				}
				// Random access: batches in reverse order read the same as in order.
				br := &batchReader{d: ds, shard: -1}
				for b := len(batches) - 1; b >= 0; b-- {
					rec, err := br.read(1, b)
					if err != nil {
						t.Fatal(err)
					}
					if rec.NumRows() != int64(len(batches[b])) {
						t.Errorf("batch %d: %d rows, want %d", b, rec.NumRows(), len(batches[b]))
					}
					rec.Release()
				}
				br.close()
				for _, r := range recs {
					r.Release()
				}
			}
		}
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	// A file whose only column is numbers: no usable column.
	b := array.NewInt64Builder(memory.DefaultAllocator)
	b.AppendValues([]int64{1, 2, 3}, nil)
	arr := b.NewArray()
	schema := arrow.NewSchema([]arrow.Field{{Name: "label", Type: arrow.PrimitiveTypes.Int64}}, nil)
	rec := array.NewRecord(schema, []arrow.Array{arr}, 3)
	defer rec.Release()
	numbers := filepath.Join(dir, "numbers.arrow")
	writeArrow(t, numbers, false, rec)
	garbage := writeFile(t, filepath.Join(dir, "garbage.arrow"), "this is not arrow data at all, just some text\n")
	truncated := filepath.Join(dir, "truncated.arrow")
	good := tokenRecord(t, TokenColumn, false, false, [][]int{{1, 2, 3}})
	defer good.Release()
	writeArrow(t, truncated, true, good)
	full, _ := os.ReadFile(truncated)
	os.WriteFile(truncated, full[:len(full)-20], 0o644)
	mixed := t.TempDir()
	writeArrow(t, filepath.Join(mixed, "a.arrow"), false, good)
	writeArrow(t, filepath.Join(mixed, "b.arrow"), false, rec)
	prepared := t.TempDir()
	txt := writeFile(t, filepath.Join(dir, "in.txt"), "one<|endoftext|>two")
	if _, err := Prepare(PrepareOptions{Inputs: []string{txt}, Out: prepared, Tokenizer: byteTokenizer{}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		opts       OpenOptions
		want       string
	}{
		{"no usable column", numbers, OpenOptions{}, `has no usable column: need "input_ids" (list<int32|int64>) or a string column "text", and its columns are label (int64); prepare the data with dmc data prepare`},
		{"column not usable", numbers, OpenOptions{TextColumn: "label"}, `column "label" is int64; it must be a string`},
		{"missing path", filepath.Join(dir, "nope"), OpenOptions{}, "does not exist"},
		{"not arrow", garbage, OpenOptions{}, "is not an Arrow IPC file or stream"},
		{"truncated stream", truncated, OpenOptions{}, "truncated"},
		{"split of a single file", numbers + ":train", OpenOptions{}, "no splits"},
		{"shards disagree", mixed, OpenOptions{}, "does not match"},
		{"empty directory", t.TempDir(), OpenOptions{}, "holds no *.arrow files"},
		{"prepared with another tokenizer", prepared, OpenOptions{Tokenizer: shiftedTokenizer{}}, "prepared with another tokenizer"},
		{"unknown split of a prepared dir", prepared + ":valid", OpenOptions{}, `no split "valid"; its splits are heldout, train`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenWith(tc.path, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// AnyColumns opens it for inspection, and streaming then explains the problem.
	ds, err := OpenWith(numbers, OpenOptions{AnyColumns: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range ds.Documents() {
		if err == nil || !strings.Contains(err.Error(), "no usable column") {
			t.Fatalf("Documents: %v", err)
		}
	}
	if _, err := NewPacker(ds, PackerOptions{SeqLen: 4}); err == nil {
		t.Fatal("NewPacker accepted a dataset without tokens")
	}
}

// shiftedTokenizer has the same vocabulary size as byteTokenizer but other pieces.
type shiftedTokenizer struct{ byteTokenizer }

func (shiftedTokenizer) Decode(ids []int) string { return strings.ToUpper(byteTokenizer{}.Decode(ids)) }
