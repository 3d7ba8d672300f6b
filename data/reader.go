package data

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// Layouts recognised by Open.
const (
	LayoutPrepared    = "prepared"       // a directory written by Prepare (manifest.json)
	LayoutDatasetDict = "hf-datasetdict" // Hugging Face save_to_disk of a DatasetDict
	LayoutHFDataset   = "hf-dataset"     // Hugging Face save_to_disk of a Dataset (state.json)
	LayoutArrowDir    = "arrow-dir"      // a directory of *.arrow files
	LayoutArrowFile   = "arrow-file"     // a single Arrow IPC file or stream
	LayoutTextFile    = "text-file"      // a text, JSON lines or Parquet file, tokenised on the fly
)

// OpenOptions configures OpenWith.
type OpenOptions struct {
	// Split picks a split of a DatasetDict or a prepared directory ("train" by default, or
	// the only split). "PATH:SPLIT" in the path does the same.
	Split string
	// TextColumn names a string column to tokenise. Empty means: use input_ids when present,
	// else a column named "text". For a JSON lines file it is the text field ("text" by
	// default); for a Parquet file it defaults to "text", else the only string column.
	TextColumn string
	// Separator splits the documents of a plain-text file ("" means DefaultSeparator).
	Separator string
	// Tokenizer tokenises text columns (BOS first, EOS when AddEOS). For prepared
	// directories it is checked against the manifest's fingerprint.
	Tokenizer Tokenizer
	AddEOS    bool
	// AnyColumns opens the dataset even when no column can be read as tokens (to inspect it);
	// Documents and NewPacker then fail with the explanation.
	AnyColumns bool
}

type columnKind int

const (
	kindNone columnKind = iota
	kindTokens
	kindText
)

// Dataset is a set of Arrow shards opened for streaming. It holds no file open between
// calls and no records beyond the one being read, so it is cheap however large the data.
type Dataset struct {
	Path     string        // the file or directory opened (without a ":split" suffix)
	Split    string        // the chosen split, "" when the layout has none
	Layout   string        // one of the Layout* constants
	Schema   *arrow.Schema // schema of the first shard (all shards must agree on the column)
	Manifest *Manifest     // for LayoutPrepared
	// DeclaredRows is the row count Hugging Face's dataset_info.json states for the split,
	// or -1. It can be stale (e.g. a sliced dataset saved with its parent's info); the rows
	// actually read are what CountRows returns.
	DeclaredRows int64

	shards    []*shard
	docFormat string // LayoutTextFile: the file's format
	column    string
	colIdx    int
	kind      columnKind
	columnErr error
	tok       Tokenizer
	addEOS    bool
}

// shard is one Arrow file. For the stream format (which has no footer) Open builds an index
// of record-batch offsets by reading only message headers, so any batch can be read directly.
// A text, JSON lines or Parquet file is a shard too (format set): its batches are groups of
// documents (text, JSON lines: indexed by byte offset at Open) or row groups (Parquet),
// delivered as records with one string column.
type shard struct {
	path       string
	stream     bool
	size       int64 // bytes of the file
	numBatches int
	prefixEnd  int64   // stream: end of the schema (and dictionary) messages
	offsets    []int64 // stream: start of each record batch, then the end of the last; text: the same for document groups

	format    string // FormatTxt, FormatJSONL, FormatParquet, or "" for Arrow
	lines     []int  // JSON lines: line number where each batch starts
	separator string // text
	column    string // the string column (JSON lines: the field)
	schema    *arrow.Schema
}

// Open opens path with default options; see OpenWith.
func Open(path string) (*Dataset, error) { return OpenWith(path, OpenOptions{}) }

// OpenWith opens a shard file (Arrow IPC file or stream format), a directory of *.arrow
// shards, a directory written by Prepare, or a Hugging Face save_to_disk directory
// (Dataset or DatasetDict). "PATH:SPLIT" selects a split.
func OpenWith(path string, opts OpenOptions) (*Dataset, error) {
	if _, err := os.Stat(path); err != nil {
		i := strings.LastIndex(path, ":")
		if i <= 0 {
			return nil, notExist(path, err)
		}
		if _, err2 := os.Stat(path[:i]); err2 != nil {
			return nil, notExist(path, err)
		}
		if opts.Split != "" && opts.Split != path[i+1:] {
			return nil, fmt.Errorf("data: split given twice (%q in the path, %q as an option); give one", path[i+1:], opts.Split)
		}
		path, opts.Split = path[:i], path[i+1:]
	}
	d := &Dataset{Path: path, DeclaredRows: -1, tok: opts.Tokenizer, addEOS: opts.AddEOS}
	files, err := d.locate(path, opts.Split)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 && d.Layout != LayoutPrepared {
		return nil, fmt.Errorf("data: %s holds no Arrow shards", path)
	}
	for _, f := range files {
		var s *shard
		var schema *arrow.Schema
		if d.Layout == LayoutTextFile {
			s, err = openDocShard(f, d.docFormat, opts)
			if s != nil {
				schema = s.schema
			}
		} else {
			s, schema, err = openShard(f)
		}
		if err != nil {
			return nil, err
		}
		if d.Schema == nil {
			d.Schema = schema
		} else if err := sameColumns(d.Schema, schema); err != nil {
			return nil, fmt.Errorf("data: shard %s does not match %s: %v (all shards of a dataset need the same columns)", f, files[0], err)
		}
		d.shards = append(d.shards, s)
	}
	if d.Schema == nil {
		d.Schema = TokenSchema // an empty split of a prepared directory
	}
	d.column, d.colIdx, d.kind, d.columnErr = resolveColumn(d.Schema, opts.TextColumn, path)
	if d.columnErr == nil && d.kind == kindText && d.tok == nil {
		d.columnErr = fmt.Errorf("data: %s: column %q holds text; give a tokenizer (--tokenizer PATH) to tokenise it on the fly, or prepare the data with dmc data prepare", path, d.column)
	}
	if d.columnErr != nil && !opts.AnyColumns {
		return nil, d.columnErr
	}
	if d.Manifest != nil && opts.Tokenizer != nil {
		if fp := TokenizerFingerprint(opts.Tokenizer); fp != d.Manifest.Tokenizer.Fingerprint {
			return nil, fmt.Errorf("data: %s was prepared with another tokenizer (%s, fingerprint %s; yours is %s); use that tokenizer or re-run dmc data prepare with yours",
				path, d.Manifest.Tokenizer.Path, d.Manifest.Tokenizer.Fingerprint, fp)
		}
	}
	return d, nil
}

func notExist(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("data: %s does not exist; give an Arrow file, a directory of shards, or a Hugging Face save_to_disk directory (PATH:SPLIT picks a split)", path)
	}
	return fmt.Errorf("data: %w", err)
}

// locate finds the shard files of path and fills Layout, Split, Manifest and DeclaredRows.
func (d *Dataset) locate(path, split string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, notExist(path, err)
	}
	if !st.IsDir() {
		if split != "" {
			return nil, fmt.Errorf("data: %s is a single file and has no splits; drop the split %q", path, split)
		}
		f, err := docFileFormat(path)
		if err != nil {
			return nil, err
		}
		d.Layout = LayoutArrowFile
		if f != "" {
			d.Layout, d.docFormat = LayoutTextFile, f
		}
		return []string{path}, nil
	}
	has := func(name string) bool {
		_, err := os.Stat(filepath.Join(path, name))
		return err == nil
	}
	switch {
	case has(ManifestName):
		m, err := ReadManifest(path)
		if err != nil {
			return nil, err
		}
		if split == "" {
			split = SplitTrain
		}
		s, ok := m.Splits[split]
		if !ok {
			return nil, fmt.Errorf("data: %s has no split %q; its splits are %s", path, split, strings.Join(slices.Sorted(mapsKeys(m.Splits)), ", "))
		}
		d.Layout, d.Split, d.Manifest, d.DeclaredRows = LayoutPrepared, split, m, s.Docs
		files := make([]string, len(s.Shards))
		for i, sh := range s.Shards {
			files[i] = filepath.Join(path, filepath.FromSlash(sh.File))
		}
		return files, nil
	case has("dataset_dict.json"):
		var dd struct {
			Splits []string `json:"splits"`
		}
		if err := readJSON(filepath.Join(path, "dataset_dict.json"), &dd); err != nil {
			return nil, err
		}
		for _, s := range dd.Splits {
			if err := checkSplitName(s); err != nil {
				return nil, fmt.Errorf("data: %s/dataset_dict.json: %v", path, err)
			}
		}
		if split == "" {
			switch {
			case slices.Contains(dd.Splits, "train"):
				split = "train"
			case len(dd.Splits) == 1:
				split = dd.Splits[0]
			default:
				return nil, fmt.Errorf("data: %s is a DatasetDict with splits %s; pick one as %s:SPLIT (or --split)", path, strings.Join(dd.Splits, ", "), path)
			}
		}
		if !slices.Contains(dd.Splits, split) {
			return nil, fmt.Errorf("data: %s has no split %q; its splits are %s", path, split, strings.Join(dd.Splits, ", "))
		}
		files, err := d.locate(filepath.Join(path, split), "")
		d.Layout, d.Split = LayoutDatasetDict, split
		return files, err
	case has("state.json"):
		if split != "" {
			return nil, fmt.Errorf("data: %s is a single Hugging Face Dataset without splits; drop the split %q", path, split)
		}
		var state struct {
			DataFiles []struct {
				Filename string `json:"filename"`
			} `json:"_data_files"`
			Split *string `json:"_split"`
		}
		if err := readJSON(filepath.Join(path, "state.json"), &state); err != nil {
			return nil, err
		}
		d.Layout = LayoutHFDataset
		if state.Split != nil {
			d.Split = *state.Split
		}
		var info struct {
			Splits map[string]struct {
				NumExamples int64 `json:"num_examples"`
			} `json:"splits"`
		}
		if has("dataset_info.json") && readJSON(filepath.Join(path, "dataset_info.json"), &info) == nil {
			if s, ok := info.Splits[d.Split]; ok {
				d.DeclaredRows = s.NumExamples
			}
		}
		var files []string
		for _, f := range state.DataFiles {
			if !filepath.IsLocal(filepath.FromSlash(f.Filename)) {
				return nil, fmt.Errorf("data: %s/state.json names the data file %q, which is not inside the folder", path, f.Filename)
			}
			files = append(files, filepath.Join(path, filepath.FromSlash(f.Filename)))
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("data: %s/state.json lists no _data_files", path)
		}
		return files, nil
	default:
		if split != "" {
			return nil, fmt.Errorf("data: %s is a plain directory of shards without splits; drop the split %q or point at the split's directory", path, split)
		}
		files, err := filepath.Glob(filepath.Join(path, "*.arrow"))
		if err != nil {
			return nil, err
		}
		sort.Strings(files)
		if len(files) == 0 {
			return nil, fmt.Errorf("data: %s holds no *.arrow files, manifest.json, dataset_dict.json or state.json; point at Arrow shards", path)
		}
		d.Layout = LayoutArrowDir
		return files, nil
	}
}

// checkSplitName refuses split names that are not one directory name: a DatasetDict's split
// is a subdirectory, and "", ".", ".." or a path would point back at the folder (an endless
// recursion) or out of it.
func checkSplitName(s string) error {
	if s == "" || s == "." || s == ".." || strings.ContainsAny(s, `/\`) || !filepath.IsLocal(s) {
		return fmt.Errorf("split name %q is not a directory name", s)
	}
	return nil
}

func mapsKeys[V any](m map[string]V) iter.Seq[string] {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("data: %s is not valid JSON: %v", path, err)
	}
	return nil
}

var arrowFileMagic = []byte("ARROW1")

// openShard reads the schema and batch count of one Arrow file, indexing stream files.
func openShard(path string) (s *shard, schema *arrow.Schema, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	defer func() {
		if r := recover(); r != nil { // arrow's flatbuffer decoding panics on garbage
			s, schema, err = nil, nil, fmt.Errorf("data: %s is not a valid Arrow IPC file or stream (%v)", path, r)
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	magic := make([]byte, len(arrowFileMagic))
	n, _ := f.ReadAt(magic, 0)
	s = &shard{path: path, size: st.Size()}
	if n == len(magic) && string(magic) == string(arrowFileMagic) {
		if err := checkArrowFile(f, st.Size()); err != nil {
			return nil, nil, fmt.Errorf("data: %s is not a valid Arrow IPC file: %v", path, err)
		}
		fr, err := ipc.NewFileReader(f, ipc.WithAllocator(arrowAlloc(s.size)))
		if err != nil {
			return nil, nil, fmt.Errorf("data: %s is not a valid Arrow IPC file: %v", path, err)
		}
		defer fr.Close()
		s.numBatches = fr.NumRecords()
		return s, fr.Schema(), nil
	}
	s.stream = true
	if err := s.indexStream(f, st.Size()); err != nil {
		return nil, nil, err
	}
	rdr, err := ipc.NewReader(io.NewSectionReader(f, 0, s.prefixEnd), ipc.WithAllocator(arrowAlloc(s.size)))
	if err != nil {
		return nil, nil, fmt.Errorf("data: %s is not an Arrow IPC file or stream: %v (expected Arrow data; convert CSV/JSON with dmc data prepare)", path, err)
	}
	defer rdr.Release()
	return s, rdr.Schema(), nil
}

// indexStream walks the messages of an Arrow IPC stream, reading headers and skipping
// bodies, and records where each record batch starts.
func (s *shard) indexStream(f io.ReaderAt, size int64) error {
	var off int64
	var hdr [8]byte
	s.prefixEnd = -1
	for off < size {
		n, _ := f.ReadAt(hdr[:], off)
		if n < 4 {
			return fmt.Errorf("data: %s: truncated Arrow stream at byte %d", s.path, off)
		}
		cid := binary.LittleEndian.Uint32(hdr[:4])
		metaLen, hdrLen := int64(int32(cid)), int64(4)
		if cid == 0xFFFFFFFF {
			if n < 8 {
				return fmt.Errorf("data: %s: truncated Arrow stream at byte %d", s.path, off)
			}
			metaLen, hdrLen = int64(int32(binary.LittleEndian.Uint32(hdr[4:]))), 8
		}
		if metaLen == 0 {
			break // end-of-stream marker
		}
		if metaLen < 0 || off+hdrLen+metaLen > size {
			return fmt.Errorf("data: %s is not an Arrow IPC file or stream (bad message at byte %d); expected Arrow data", s.path, off)
		}
		meta := make([]byte, metaLen)
		if _, err := f.ReadAt(meta, off+hdrLen); err != nil {
			return fmt.Errorf("data: %s: %w", s.path, err)
		}
		if err := checkMessage(meta); err != nil {
			return fmt.Errorf("data: %s is not an Arrow IPC file or stream (bad message at byte %d: %v); expected Arrow data", s.path, off, err)
		}
		msg := ipc.NewMessage(memory.NewBufferBytes(meta), memory.NewBufferBytes(nil))
		typ, bodyLen := msg.Type(), msg.BodyLen()
		msg.Release()
		// A negative body length would walk back (to the same message, for ever, growing
		// s.offsets); one past the end would be allocated by the library before reading.
		if end := off + hdrLen + metaLen; bodyLen < 0 || bodyLen > size-end {
			return fmt.Errorf("data: %s: the message at byte %d claims a %d-byte body, but %d bytes follow it (corrupt or truncated)", s.path, off, bodyLen, size-end)
		}
		switch typ {
		case ipc.MessageSchema:
			if off != 0 {
				return fmt.Errorf("data: %s: a second schema message at byte %d", s.path, off)
			}
		case ipc.MessageDictionaryBatch:
			if s.prefixEnd >= 0 {
				return fmt.Errorf("data: %s: dictionary batches after the first record batch are not supported; rewrite the data without dictionary encoding", s.path)
			}
		case ipc.MessageRecordBatch:
			if s.prefixEnd < 0 {
				s.prefixEnd = off
			}
			s.offsets = append(s.offsets, off)
		default:
			return fmt.Errorf("data: %s is not an Arrow IPC stream (message type %v at byte %d)", s.path, typ, off)
		}
		if off == 0 && typ != ipc.MessageSchema {
			return fmt.Errorf("data: %s: an Arrow stream must start with its schema", s.path)
		}
		off += hdrLen + metaLen + bodyLen
	}
	if off > size {
		return fmt.Errorf("data: %s: truncated Arrow stream (a message body runs past the end of the file)", s.path)
	}
	if s.prefixEnd < 0 {
		s.prefixEnd = off
	}
	s.numBatches = len(s.offsets)
	s.offsets = append(s.offsets, off)
	return nil
}

func sameColumns(a, b *arrow.Schema) error {
	if a.NumFields() != b.NumFields() {
		return fmt.Errorf("%d columns vs %d", a.NumFields(), b.NumFields())
	}
	for i := range a.Fields() {
		fa, fb := a.Field(i), b.Field(i)
		if fa.Name != fb.Name || !arrow.TypeEqual(fa.Type, fb.Type) {
			return fmt.Errorf("column %d is %s %s vs %s %s", i, fa.Name, fa.Type, fb.Name, fb.Type)
		}
	}
	return nil
}

func isTokenList(t arrow.DataType) bool {
	var elem arrow.DataType
	switch lt := t.(type) {
	case *arrow.ListType:
		elem = lt.Elem()
	case *arrow.LargeListType:
		elem = lt.Elem()
	default:
		return false
	}
	return elem.ID() == arrow.INT32 || elem.ID() == arrow.INT64
}

func isText(t arrow.DataType) bool { return t.ID() == arrow.STRING || t.ID() == arrow.LARGE_STRING }

// resolveColumn picks the column to read tokens from.
func resolveColumn(schema *arrow.Schema, textColumn, path string) (string, int, columnKind, error) {
	if textColumn != "" {
		idx := schema.FieldIndices(textColumn)
		if len(idx) == 0 {
			return "", -1, kindNone, fmt.Errorf("data: %s has no column %q; its columns are %s", path, textColumn, describeFields(schema.Fields()))
		}
		t := schema.Field(idx[0]).Type
		switch {
		case isText(t):
			return textColumn, idx[0], kindText, nil
		case isTokenList(t):
			return textColumn, idx[0], kindTokens, nil
		}
		return "", -1, kindNone, fmt.Errorf("data: %s: column %q is %s; it must be a string (text) or a list of int32/int64 (token ids)", path, textColumn, t)
	}
	if idx := schema.FieldIndices(TokenColumn); len(idx) > 0 && isTokenList(schema.Field(idx[0]).Type) {
		return TokenColumn, idx[0], kindTokens, nil
	}
	if idx := schema.FieldIndices(DefaultTextField); len(idx) > 0 && isText(schema.Field(idx[0]).Type) {
		return DefaultTextField, idx[0], kindText, nil
	}
	var texts []string
	for _, f := range schema.Fields() {
		if isText(f.Type) {
			texts = append(texts, f.Name)
		}
	}
	hint := "prepare the data with dmc data prepare"
	if len(texts) > 0 {
		hint = fmt.Sprintf("name the text column to tokenise (--text-column, one of %s) and give a tokenizer", strings.Join(texts, ", "))
	}
	return "", -1, kindNone, fmt.Errorf("data: %s has no usable column: need %q (list<int32|int64>) or a string column %q, and its columns are %s; %s",
		path, TokenColumn, DefaultTextField, describeFields(schema.Fields()), hint)
}

// Column returns the column read as tokens ("" when none) and whether it holds text.
func (d *Dataset) Column() (name string, isText bool) { return d.column, d.kind == kindText }

// ColumnErr explains why no column can be read as tokens (nil when one can).
func (d *Dataset) ColumnErr() error { return d.columnErr }

// Shards returns the shard file paths in order.
func (d *Dataset) Shards() []string {
	out := make([]string, len(d.shards))
	for i, s := range d.shards {
		out[i] = s.path
	}
	return out
}

// Formats counts the shards in the Arrow IPC "file" and "stream" formats.
func (d *Dataset) Formats() (files, streams int) {
	for _, s := range d.shards {
		if s.format != "" {
			continue
		}
		if s.stream {
			streams++
		} else {
			files++
		}
	}
	return files, streams
}

// NumBatches returns the number of record batches over all shards.
func (d *Dataset) NumBatches() int {
	n := 0
	for _, s := range d.shards {
		n += s.numBatches
	}
	return n
}

// Records streams the record batches of all shards in order. A record is valid only until
// the loop body returns (call Retain to keep it).
func (d *Dataset) Records() iter.Seq2[arrow.Record, error] {
	return func(yield func(arrow.Record, error) bool) {
		br := &batchReader{d: d, shard: -1}
		defer br.close()
		for si, s := range d.shards {
			for b := 0; b < s.numBatches; b++ {
				rec, err := br.read(si, b)
				if err != nil {
					yield(nil, err)
					return
				}
				ok := yield(rec, nil)
				rec.Release()
				if !ok {
					return
				}
			}
		}
	}
}

// CountRows reads all batches and returns the number of rows.
func (d *Dataset) CountRows() (int64, error) {
	var n int64
	for rec, err := range d.Records() {
		if err != nil {
			return n, err
		}
		n += rec.NumRows()
	}
	return n, nil
}

// Documents streams the token ids of every row in storage order (BOS first for text
// columns, as tokenised). The slice is valid only until the loop body returns.
func (d *Dataset) Documents() iter.Seq2[[]int32, error] {
	return func(yield func([]int32, error) bool) {
		if d.columnErr != nil {
			yield(nil, d.columnErr)
			return
		}
		var scratch []int32
		for rec, err := range d.Records() {
			if err != nil {
				yield(nil, err)
				return
			}
			col := d.docColumn(rec)
			for i := 0; i < col.len(); i++ {
				var ids []int32
				ids, scratch, err = col.tokens(i, scratch)
				if !yield(ids, err) || err != nil {
					return
				}
			}
		}
	}
}

// batchReader reads record batches, keeping the current shard open so that consecutive
// batches of one shard cost one open.
type batchReader struct {
	d      *Dataset
	shard  int
	f      *os.File
	fr     *ipc.FileReader
	sr     *ipc.Reader
	stream int          // the batch sr yields next
	pq     *parquetText // a Parquet shard read on the fly
}

func (br *batchReader) close() {
	if br.pq != nil {
		br.pq.close()
		br.pq = nil
	}
	if br.sr != nil {
		br.sr.Release()
		br.sr = nil
	}
	if br.fr != nil {
		br.fr.Close()
		br.fr = nil
	}
	if br.f != nil {
		br.f.Close()
		br.f = nil
	}
	br.shard = -1
}

// read returns batch b of shard si; the caller owns (and must Release) the record.
func (br *batchReader) read(si, b int) (rec arrow.Record, err error) {
	s := br.d.shards[si]
	defer func() {
		if r := recover(); r != nil {
			rec, err = nil, fmt.Errorf("data: %s batch %d is corrupt (%v)", s.path, b, r)
		}
	}()
	if s.format != "" {
		return br.readDocs(si, b)
	}
	if br.shard != si {
		br.close()
		if br.f, err = os.Open(s.path); err != nil {
			return nil, fmt.Errorf("data: %w", err)
		}
		br.shard = si
		if !s.stream {
			if br.fr, err = ipc.NewFileReader(br.f, ipc.WithAllocator(arrowAlloc(s.size))); err != nil {
				return nil, fmt.Errorf("data: %s: %w", s.path, err)
			}
		}
	}
	if !s.stream {
		if rec, err = br.fr.RecordAt(b); err != nil {
			return nil, fmt.Errorf("data: %s batch %d: %w", s.path, b, err)
		}
		return rec, nil
	}
	if br.sr == nil || br.stream != b {
		if br.sr != nil {
			br.sr.Release()
		}
		body := io.NewSectionReader(br.f, s.offsets[b], s.offsets[s.numBatches]-s.offsets[b])
		src := io.MultiReader(io.NewSectionReader(br.f, 0, s.prefixEnd), bufio.NewReaderSize(body, 1<<16))
		if br.sr, err = ipc.NewReader(src, ipc.WithAllocator(arrowAlloc(s.size))); err != nil {
			return nil, fmt.Errorf("data: %s: %w", s.path, err)
		}
	}
	if !br.sr.Next() {
		err := br.sr.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("data: %s batch %d: %w", s.path, b, err)
	}
	br.stream = b + 1
	rec = br.sr.Record()
	rec.Retain()
	return rec, nil
}

// docColumn gives access to the documents of one record batch.
type docColumn struct {
	kind   columnKind
	n      int
	list   array.ListLike
	vals32 []int32
	vals64 []int64
	text   interface {
		IsNull(int) bool
		Value(int) string
	}
	tok    Tokenizer
	addEOS bool
	path   string
}

func (d *Dataset) docColumn(rec arrow.Record) *docColumn {
	c := &docColumn{kind: d.kind, tok: d.tok, addEOS: d.addEOS, path: d.Path}
	arr := rec.Column(d.colIdx)
	c.n = arr.Len()
	switch d.kind {
	case kindTokens:
		c.list = arr.(array.ListLike)
		switch v := c.list.ListValues().(type) {
		case *array.Int32:
			c.vals32 = v.Int32Values()
		case *array.Int64:
			c.vals64 = v.Int64Values()
		}
	case kindText:
		switch v := arr.(type) {
		case *array.String:
			c.text = v
		case *array.LargeString:
			c.text = v
		}
	}
	return c
}

func (c *docColumn) len() int { return c.n }

// tokens returns row i's token ids, a view into the record when possible (else into
// scratch, which is returned for reuse).
func (c *docColumn) tokens(i int, scratch []int32) (ids, sc []int32, err error) {
	defer func() {
		if r := recover(); r != nil { // corrupt offsets inside an Arrow array
			ids, sc, err = nil, scratch, fmt.Errorf("data: %s: row %d is corrupt (%v)", c.path, i, r)
		}
	}()
	switch c.kind {
	case kindTokens:
		if c.list.IsNull(i) {
			return nil, scratch, nil
		}
		start, end := c.list.ValueOffsets(i)
		n := int64(len(c.vals32))
		if c.vals32 == nil {
			n = int64(len(c.vals64))
		}
		if start < 0 || end < start || end > n {
			return nil, scratch, fmt.Errorf("data: %s: row %d has token offsets %d..%d outside its %d values (corrupt data)", c.path, i, start, end, n)
		}
		if c.vals32 != nil || c.vals64 == nil {
			return c.vals32[start:end], scratch, nil
		}
		scratch = scratch[:0]
		for _, v := range c.vals64[start:end] {
			if v < 0 || v > 1<<31-1 {
				return nil, scratch, fmt.Errorf("data: %s: token id %d is out of range", c.path, v)
			}
			scratch = append(scratch, int32(v))
		}
		return scratch, scratch, nil
	case kindText:
		if c.text.IsNull(i) {
			return nil, scratch, nil
		}
		ids := c.tok.Encode(c.text.Value(i), true, c.addEOS)
		scratch = scratch[:0]
		for _, v := range ids {
			scratch = append(scratch, int32(v))
		}
		return scratch, scratch, nil
	}
	panic("data: tokens on a dataset without a token column")
}
