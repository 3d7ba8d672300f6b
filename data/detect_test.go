package data

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// stringRecord builds a record of string columns (name → values, in the given order) and,
// when ints is set, an int64 column "n".
func stringRecord(t testing.TB, names []string, cols [][]string, ints bool) arrow.Record {
	t.Helper()
	var fields []arrow.Field
	var arrs []arrow.Array
	for i, name := range names {
		b := array.NewStringBuilder(memory.DefaultAllocator)
		b.AppendValues(cols[i], nil)
		arrs = append(arrs, b.NewArray())
		b.Release()
		fields = append(fields, arrow.Field{Name: name, Type: arrow.BinaryTypes.String, Nullable: true})
	}
	if ints {
		b := array.NewInt64Builder(memory.DefaultAllocator)
		for i := range cols[0] {
			b.Append(int64(i))
		}
		arrs = append(arrs, b.NewArray())
		b.Release()
		fields = append(fields, arrow.Field{Name: "n", Type: arrow.PrimitiveTypes.Int64})
	}
	rec := array.NewRecord(arrow.NewSchema(fields, nil), arrs, int64(len(cols[0])))
	for _, a := range arrs {
		a.Release()
	}
	return rec
}

func TestDetectFormat(t *testing.T) {
	dir := t.TempDir()
	rec := stringRecord(t, []string{"text"}, [][]string{{"a", "b"}}, false)
	defer rec.Release()
	arrowFile := filepath.Join(dir, "data.bin")
	writeArrow(t, arrowFile, false, rec)
	arrowStream := filepath.Join(dir, "stream")
	writeArrow(t, arrowStream, true, rec)
	pq := filepath.Join(dir, "rows.dat")
	writeParquet(t, pq, []string{"x", "y"}, 10)

	// A two-byte rune cut by the 64 KiB sniff window is still text.
	cut := strings.Repeat("a", sniffBytes-1) + "é and more"
	longJSON := `{"text": "` + strings.Repeat("z", sniffBytes+100) + `"}` + "\n"
	nulLate := strings.Repeat("word ", 2*sniffBytes/5) + "\x00tail"
	cases := []struct {
		name, content string // content "" with a path below means: use that file
		path          string
		want          string
		wantErr       string // substring of the error; "" means no error
		wantOffset    int64
	}{
		{name: "arrow file", path: arrowFile, want: FormatArrow},
		{name: "arrow stream", path: arrowStream, want: FormatArrowStream},
		{name: "parquet", path: pq, want: FormatParquet},
		{name: "json lines", content: "\n  {\"text\": \"hi\", \"n\": 1}\n{\"text\": \"x\"}\n", want: FormatJSONL},
		{name: "json lines, one long first line", content: longJSON, want: FormatJSONL},
		{name: "brace but not JSON is text", content: "{not json} just prose\nmore\n", want: FormatTxt},
		{name: "plain text", content: " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : <unk> Chronicles\n", want: FormatTxt},
		{name: "empty file", content: "", want: FormatTxt},
		{name: "BOM text", content: "\uFEFFhello", want: FormatTxt},
		{name: "rune cut by the sniff window", content: cut, want: FormatTxt},
		{name: "NUL byte", content: "abc\x00def", wantErr: "at byte offset 3 it holds a NUL byte", wantOffset: 3},
		{name: "invalid UTF-8", content: "ok ok \xff\xfe", wantErr: "at byte offset 6 byte 0xff is not valid UTF-8", wantOffset: 6},
		{name: "NUL after the sniff window is found by the reader, not here", content: nulLate, want: FormatTxt},
		{name: "directory", path: dir, wantErr: "is a directory"},
		{name: "missing", path: filepath.Join(dir, "nope"), wantErr: "no such file"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = writeFile(t, filepath.Join(dir, "case", string(rune('a'+i))), tc.content)
			}
			got, err := DetectFormat(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("DetectFormat = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				var be *BinaryError
				if tc.wantOffset > 0 && (!errors.As(err, &be) || be.Offset != tc.wantOffset || be.Path != path) {
					t.Fatalf("error %#v, want a BinaryError at offset %d naming %s", err, tc.wantOffset, path)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("DetectFormat = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestPrepareTextByContent: a text file whose name says nothing (WikiText's wiki.test.raw)
// is prepared as text; binary data given as text is refused with the file and offset.
func TestPrepareTextByContent(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile(asset(t, "wikitext-2-valid/wiki.valid.tokens"))
	if err != nil {
		t.Fatal(err)
	}
	raw = raw[:200<<10] // enough for the test, quick
	wiki := writeFile(t, filepath.Join(dir, "wiki.test.raw"), string(raw))
	noExt := writeFile(t, filepath.Join(dir, "corpus"), "one<|endoftext|>two<|endoftext|>three")
	jsonNoExt := writeFile(t, filepath.Join(dir, "records.out"), `{"text":"alpha"}`+"\n"+`{"text":"beta"}`+"\n")
	garbage := writeFile(t, filepath.Join(dir, "blob"), "\x7fELF\x02\x01\x01\x00\x00\x00")
	late := writeFile(t, filepath.Join(dir, "late.txt"), strings.Repeat("fine text ", 10000)+"<|endoftext|>bad \xc3\x28 byte")
	lateOffset := int64(len(strings.Repeat("fine text ", 10000) + "<|endoftext|>bad ")) // the invalid sequence
	badTxt := writeFile(t, filepath.Join(dir, "bad.txt"), "\x00\x01\x02")
	xz := writeFile(t, filepath.Join(dir, "book.txt.xz"), "\xfd7zXZ\x00\x00")

	cases := []struct {
		name    string
		input   string
		want    []string // documents; nil with wantErr
		wantErr string
	}{
		{"WikiText .raw", wiki, []string{strings.TrimSpace(string(raw))}, ""},
		{"no extension", noExt, []string{"one", "two", "three"}, ""},
		{"JSON lines without the extension", jsonNoExt, []string{"alpha", "beta"}, ""},
		{"binary without an extension", garbage, nil, "blob is not text: at byte offset 7 it holds a NUL byte"},
		{"invalid UTF-8 deep in a .txt", late, nil, "late.txt is not text: at byte offset " + strconv.FormatInt(lateOffset, 10)},
		{"binary .txt", badTxt, nil, "bad.txt is not text: at byte offset 0 it holds a NUL byte"},
		{"damaged xz", xz, nil, "book.txt.xz: the xz data is damaged or truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			_, err := Prepare(PrepareOptions{Inputs: []string{tc.input}, Out: out, Tokenizer: byteTokenizer{}})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				if _, serr := os.Stat(out); serr == nil {
					t.Error("a failed Prepare created the output directory")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := readAllDocs(t, out, OpenOptions{})
			if want := encodeAll(byteTokenizer{}, tc.want, false); !reflect.DeepEqual(got, want) {
				t.Fatalf("read back %d docs, want %d", len(got), len(want))
			}
		})
	}
}

// TestOpenTextFiles: OpenWith reads text, JSON lines and Parquet files directly (named or
// recognised by content), tokenising on the fly, with the same documents as Prepare, and
// a Packer over them works; binary or unknown data still gets the Arrow reader's error.
func TestOpenTextFiles(t *testing.T) {
	dir := t.TempDir()
	var docs []string
	for i := range 2500 { // several document groups
		docs = append(docs, strings.Repeat("w", i%7+1)+" "+strconv.Itoa(i))
	}
	raw := writeFile(t, filepath.Join(dir, "wiki.test.raw"), "\uFEFF"+strings.Join(docs, "\n<|endoftext|>\n"))
	hashSep := writeFile(t, filepath.Join(dir, "hash.txt"), strings.Join(docs[:10], "##"))
	var jl bytes.Buffer
	for _, d := range docs {
		jl.WriteString(`{"id": 1, "body": "` + d + `"}` + "\r\n")
	}
	jsonl := writeFile(t, filepath.Join(dir, "rows.data"), jl.String())
	pq := filepath.Join(dir, "x.parquet")
	writeParquet(t, pq, docs[:50], 7)
	tok := byteTokenizer{}

	cases := []struct {
		name string
		path string
		opts OpenOptions
		want []string
	}{
		{"text without extension", raw, OpenOptions{}, docs},
		{"separator option", hashSep, OpenOptions{Separator: "##"}, docs[:10]},
		{"JSON lines by content, field option", jsonl, OpenOptions{TextColumn: "body"}, docs},
		{"parquet, default column", pq, OpenOptions{}, docs[:50]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Tokenizer = tok
			ds, err := OpenWith(tc.path, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if ds.Layout != LayoutTextFile {
				t.Errorf("layout %q", ds.Layout)
			}
			got := readAllDocs(t, tc.path, tc.opts)
			if want := encodeAll(tok, tc.want, false); !reflect.DeepEqual(got, want) {
				t.Fatalf("%d docs back, want %d (first %v vs %v)", len(got), len(want), got[:1], want[:1])
			}
			// Shuffled packing touches the groups in random order: every token comes back.
			p, err := NewPacker(ds, PackerOptions{SeqLen: 16, Shuffle: true, Seed: 3, Epochs: 1})
			if err != nil {
				t.Fatal(err)
			}
			var n, total int
			for _, d := range got {
				total += len(d)
			}
			for w, err := range p.Windows() {
				if err != nil {
					t.Fatal(err)
				}
				n += len(w.Tokens) - 1
			}
			if n != (total-1)/16*16 { // the last partial window is dropped
				t.Fatalf("packed %d tokens of %d", n, total)
			}
		})
	}
	t.Run("errors", func(t *testing.T) {
		garbage := writeFile(t, filepath.Join(dir, "garbage"), "\x00\x01binary")
		csv := writeFile(t, filepath.Join(dir, "t.csv"), "a,b\n1,2\n")
		for _, tc := range []struct {
			path string
			opts OpenOptions
			want string
		}{
			{raw, OpenOptions{}, `column "text" holds text; give a tokenizer`},
			{jsonl, OpenOptions{Tokenizer: tok}, `has no field "text"; its fields are body, id; pass the text field with --text-field NAME`},
			{garbage, OpenOptions{}, "is not an Arrow IPC file or stream"},
			{csv, OpenOptions{}, "--format txt"},
			{raw + ":train", OpenOptions{}, "no splits"},
		} {
			if _, err := OpenWith(tc.path, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: got %v, want %q", filepath.Base(tc.path), err, tc.want)
			}
		}
	})
}
