package data

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// compressBytes compresses b with the same libraries Prepare decompresses with (bzip2 has
// no writer in the standard library: its fixture is testdata/four_stories.txt.bz2).
func compressBytes(t testing.TB, compression string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch compression {
	case CompressionGzip:
		w = gzip.NewWriter(&buf)
	case CompressionXz:
		w, err = xz.NewWriter(&buf)
	case CompressionZstd:
		w, err = zstd.NewWriter(&buf)
	default:
		t.Fatalf("no writer for %q", compression)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// manyDocs is a corpus of n documents of varied lengths, with non-ASCII text.
func manyDocs(n int, tag string) []string {
	docs := make([]string, n)
	for i := range docs {
		docs[i] = fmt.Sprintf("%s story %d: %s and the café%s.", tag, i, strings.Repeat("once upon a time ", i%13+1), strings.Repeat("!", i%3))
	}
	return docs
}

// preparedBytes reads the manifest's splits and every shard's bytes of a prepared directory:
// what must not change when only the way the input is stored (or read) changes.
func preparedBytes(t testing.TB, dir string) (map[string]Split, map[string][]byte) {
	t.Helper()
	m, err := ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	shards := map[string][]byte{}
	for _, f := range m.Files() {
		if f == ManifestName {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil {
			t.Fatal(err)
		}
		shards[f] = b
	}
	return m.Splits, shards
}

func samePrepared(t testing.TB, got, want string) {
	t.Helper()
	gs, gb := preparedBytes(t, got)
	ws, wb := preparedBytes(t, want)
	if !reflect.DeepEqual(gs, ws) {
		t.Fatalf("splits differ:\n got %+v\nwant %+v", gs, ws)
	}
	if !reflect.DeepEqual(gb, wb) {
		t.Fatal("shard bytes differ")
	}
}

// TestPrepareCompressed: a compressed file gives the same shards as the file itself, with
// each split rule that looks at bytes or documents; the manifest records the compression.
func TestPrepareCompressed(t *testing.T) {
	dir := t.TempDir()
	txt := []byte(strings.Join(manyDocs(3000, "txt"), "\n<|endoftext|>\n"))
	var jl bytes.Buffer
	for _, d := range manyDocs(500, "jsonl") {
		fmt.Fprintf(&jl, "{\"id\": 1, \"text\": %q}\n", d)
	}
	four, err := os.ReadFile("testdata/four_stories.txt")
	if err != nil {
		t.Fatal(err)
	}
	plain := map[string]string{
		"corpus.txt":  writeFile(t, filepath.Join(dir, "plain", "corpus.txt"), string(txt)),
		"rows.jsonl":  writeFile(t, filepath.Join(dir, "plain", "rows.jsonl"), jl.String()),
		"stories.txt": writeFile(t, filepath.Join(dir, "plain", "stories.txt"), string(four)),
	}
	cases := []struct {
		name, compression, file string
		content                 []byte
		plain                   string
	}{
		{"gzip text", CompressionGzip, "corpus.txt.gz", txt, "corpus.txt"},
		{"xz text", CompressionXz, "corpus.txt.xz", txt, "corpus.txt"},
		{"zstd text", CompressionZstd, "corpus.txt.zst", txt, "corpus.txt"},
		{"gzip JSON lines", CompressionGzip, "rows.jsonl.gz", jl.Bytes(), "rows.jsonl"},
		{"xz JSON lines", CompressionXz, "rows.jsonl.xz", jl.Bytes(), "rows.jsonl"},
		{"zstd JSON lines", CompressionZstd, "rows.jsonl.zst", jl.Bytes(), "rows.jsonl"},
		{"bzip2 text (fixture)", CompressionBzip2, "", nil, "stories.txt"},
	}
	rules := []struct {
		name string
		opts PrepareOptions
	}{
		{"split by bytes", PrepareOptions{SplitByBytes: 0.7, ShardBytes: 16 << 10}},
		{"held-out fraction", PrepareOptions{HeldoutFrac: 0.2, Seed: 3}},
	}
	for _, tc := range cases {
		for _, rule := range rules {
			t.Run(tc.name+", "+rule.name, func(t *testing.T) {
				in := "testdata/four_stories.txt.bz2"
				if tc.content != nil {
					in = filepath.Join(dir, tc.file)
					if _, err := os.Stat(in); err != nil {
						writeFile(t, in, string(compressBytes(t, tc.compression, tc.content)))
					}
				}
				prep := func(input string) (string, *Manifest) {
					opts := rule.opts
					opts.Inputs, opts.Out, opts.Tokenizer, opts.Workers = []string{input}, t.TempDir(), byteTokenizer{}, 2
					m, err := Prepare(opts)
					if err != nil {
						t.Fatal(err)
					}
					return opts.Out, m
				}
				gotDir, m := prep(in)
				wantDir, want := prep(plain[tc.plain])
				samePrepared(t, gotDir, wantDir)
				if m.Format != want.Format || m.SplitRule != want.SplitRule {
					t.Errorf("format %q rule %+v, want %q %+v", m.Format, m.SplitRule, want.Format, want.SplitRule)
				}
				st, _ := os.Stat(in)
				src := m.Sources[0]
				if src.Compression != tc.compression || src.Bytes != st.Size() || src.UncompressedBytes != want.Sources[0].Bytes || src.Docs != want.Sources[0].Docs {
					t.Errorf("source %+v, want %s, %d bytes stored, %d decompressed, %d docs", src, tc.compression, st.Size(), want.Sources[0].Bytes, want.Sources[0].Docs)
				}
			})
		}
	}
}

// TestPrepareCompressedByContent: compression is told by magic bytes whatever the name,
// then the format inside by the inner name or content; names that lie the other way, other
// archives and damaged data are errors that name the file and say what to do.
func TestPrepareCompressedByContent(t *testing.T) {
	dir := t.TempDir()
	docs := []string{"alpha beta", "gamma", "délta"}
	text := []byte(strings.Join(docs, "<|endoftext|>"))
	jsonl := []byte(`{"text": "alpha beta"}` + "\n" + `{"text": "gamma"}` + "\n" + `{"text": "délta"}` + "\n")
	w := func(name string, b []byte) string { return writeFile(t, filepath.Join(dir, name), string(b)) }

	xzText := compressBytes(t, CompressionXz, bytes.Repeat(text, 200))
	truncated := w("cut.txt.xz", xzText[:len(xzText)/2])
	flipped := append([]byte(nil), xzText...)
	for i := 40; i < 60; i++ {
		flipped[i] ^= 0x55
	}
	var zipBuf bytes.Buffer
	zw := zip.NewWriter(&zipBuf)
	f, _ := zw.Create("a.txt")
	f.Write(text)
	zw.Close()
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: "a.txt", Mode: 0o644, Size: int64(len(text))})
	tw.Write(text)
	tw.Close()
	pq := filepath.Join(dir, "rows.parquet")
	writeParquet(t, pq, docs, 2)
	pqBytes, err := os.ReadFile(pq)
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		input   string
		want    []string // documents; nil with wantErr
		wantErr string
	}{
		{"gzip named .txt", w("notes.txt", compressBytes(t, CompressionGzip, text)), docs, ""},
		{"zstd named .bin: text inside by content", w("data.bin", compressBytes(t, CompressionZstd, text)), docs, ""},
		{"xz named .jsonl", w("rows.jsonl", compressBytes(t, CompressionXz, jsonl)), docs, ""},
		{"gzip without extension: JSON lines by content", w("export", compressBytes(t, CompressionGzip, jsonl)), docs, ""},
		{"xz named .gz", w("mixed.txt.gz", compressBytes(t, CompressionXz, text)), docs, ""},
		{"concatenated gzip members", w("two.txt.gz", append(compressBytes(t, CompressionGzip, text[:9]), compressBytes(t, CompressionGzip, text[9:])...)), docs, ""},
		{"plain text named .gz", w("plain.txt.gz", text), nil, "plain.txt.gz is named .gz but does not hold gzip data"},
		{"empty .xz", w("empty.txt.xz", nil), nil, "empty.txt.xz is empty"},
		{"truncated xz", truncated, nil, "reading " + truncated + ": the xz data is damaged or truncated"},
		{"damaged xz", w("flipped.txt.xz", flipped), nil, "flipped.txt.xz: the xz data is damaged or truncated"},
		{"damaged gzip header", w("bad.txt.gz", []byte{0x1f, 0x8b, 8, 0xff, 0xff}), nil, "bad.txt.gz: the gzip data is damaged or truncated"},
		{"binary inside gzip", w("bin.txt.gz", compressBytes(t, CompressionGzip, []byte("ok\x00no"))), nil, "at byte offset 2 of the decompressed data it holds a NUL byte"},
		{"zip", w("corpus.zip", zipBuf.Bytes()), nil, "corpus.zip is a zip archive, which dmc does not read; unzip it"},
		{"zip named .txt", w("zipped.txt", zipBuf.Bytes()), nil, "zipped.txt is a zip archive"},
		{"tar.gz", w("corpus.tar.gz", compressBytes(t, CompressionGzip, tarBuf.Bytes())), nil, "is a tar archive inside gzip compression, which dmc does not read; extract it (tar xf FILE)"},
		{"tar inside xz, no name", w("blob.xz", compressBytes(t, CompressionXz, tarBuf.Bytes())), nil, "blob.xz is a tar archive inside xz compression"},
		{"plain tar", w("corpus.tar", tarBuf.Bytes()), nil, "corpus.tar is a tar archive"},
		{"7z by name", w("corpus.7z", []byte("not really")), nil, "corpus.7z is a 7-Zip archive, which dmc does not read; extract it (7z x FILE)"},
		{"lz4 by magic", w("x.dat", []byte{0x04, 0x22, 0x4D, 0x18, 1, 2, 3}), nil, "lz4-compressed"},
		{"compressed Parquet", w("rows.parquet.gz", compressBytes(t, CompressionGzip, pqBytes)), nil, "Parquet data inside gzip compression, which cannot be read as a stream; decompress it first"},
		{"compressed CSV", w("table.csv.zst", compressBytes(t, CompressionZstd, []byte("a,b\n1,2\n"))), nil, "is CSV (by its extension)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			_, err := Prepare(PrepareOptions{Inputs: []string{tc.input}, Out: out, Tokenizer: byteTokenizer{}, Workers: 3})
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
			if got, want := readAllDocs(t, out, OpenOptions{}), encodeAll(byteTokenizer{}, tc.want, false); !reflect.DeepEqual(got, want) {
				t.Fatalf("read back %v, want %v", got, want)
			}
		})
	}
	// Readers that need random access explain instead of reading compressed bytes as text.
	if _, err := OpenWith(w("direct.gz", compressBytes(t, CompressionGzip, text)), OpenOptions{Tokenizer: byteTokenizer{}}); err == nil ||
		!strings.Contains(err.Error(), "gzip-compressed; this reader needs the data uncompressed: prepare it with dmc data prepare") {
		t.Fatalf("OpenWith of a .gz: %v", err)
	}
}

// TestPrepareRealXz reads two real books of the shared assets as they are stored (.txt.xz,
// made by the xz tool) and compares with the text decompressed here.
func TestPrepareRealXz(t *testing.T) {
	dir := t.TempDir()
	var xzs, plains []string
	for _, name := range []string{"pg00011_alice-s-adventures-in-wonderland.txt.xz", "pg00043_the-strange-case-of-dr-jekyll-and-mr-hyd.txt.xz"} {
		p := asset(t, "gutenberg/"+name)
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := xz.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		xzs = append(xzs, p)
		plains = append(plains, writeFile(t, filepath.Join(dir, strings.TrimSuffix(name, ".xz")), string(b)))
	}
	tok := loadTok512(t)
	prep := func(inputs []string, workers int) (string, *Manifest) {
		out := t.TempDir()
		m, err := Prepare(PrepareOptions{Inputs: inputs, Out: out, Tokenizer: tok, SplitByBytes: 0.5, Workers: workers, Separator: "\n\n\n\n"})
		if err != nil {
			t.Fatal(err)
		}
		return out, m
	}
	got, m := prep(xzs, 2)
	want, _ := prep(plains, 1)
	samePrepared(t, got, want)
	if tr, ho := m.Splits[SplitTrain], m.Splits[SplitHeldout]; tr.Docs+ho.Docs < 20 || tr.Tokens+ho.Tokens < 150_000 || tr.Docs == 0 || ho.Docs == 0 {
		t.Fatalf("splits %+v", m.Splits)
	}
}
