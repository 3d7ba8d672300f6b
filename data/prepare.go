package data

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/ipc"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// DefaultShardBytes is the shard size limit when PrepareOptions.ShardBytes is zero.
const DefaultShardBytes = 256 << 20

// DefaultHeldoutFrac is the held-out fraction the CLI uses by default.
const DefaultHeldoutFrac = 0.05

// PrepareOptions configures Prepare.
type PrepareOptions struct {
	Inputs        []string  // files and/or directories, read in the given order
	Out           string    // output directory (created); gets train/, heldout/ and manifest.json
	Tokenizer     Tokenizer // required
	TokenizerPath string    // recorded in the manifest (and its file hashed) when set
	Format        string    // "txt", "jsonl", "parquet", "arrow" or "" to tell by extension, else by content (DetectFormat)
	Separator     string    // .txt document separator; "" means DefaultSeparator
	TextField     string    // .jsonl field; "" means DefaultTextField (also a Parquet column when TextColumn is empty, as before)
	// TextColumn is the string column of Parquet and Arrow inputs (Arrow files or streams,
	// Hugging Face save_to_disk directories). "" picks the column "text", else the only
	// string column; with several the error lists them (--text-column NAME).
	TextColumn string
	AddEOS     bool // append EOS to every document (BOS is always prepended)

	// Split rule. SplitByBytes in (0,1] puts the documents that start in the first
	// SplitByBytes of all input bytes (files concatenated in order) into train and the rest
	// into held-out; the TinyStories convention is 0.85. Parquet has no per-row byte
	// offsets, so a Parquet row starts at its row position scaled to the file size.
	// Otherwise each document is held out with probability HeldoutFrac (0 = no held-out
	// split), decided by a hash of its index and Seed.
	HeldoutFrac  float64
	SplitByBytes float64
	Seed         uint64

	ShardBytes int64 // rotate shards at about this size; 0 means DefaultShardBytes
	// Overwrite replaces an existing prepared directory at Out (--force). The new data is
	// written to a temporary sibling directory and swapped in only when complete; then only
	// the files the old manifest lists are removed, never other files in Out. A directory
	// that holds files but no manifest is refused even with Overwrite.
	Overwrite bool

	// Progress, when set, is called now and then (and once at the end with Done set).
	Progress func(PrepareProgress)

	batchTokens int // tokens per record batch; 0 picks from ShardBytes (tests shrink it)
}

// PrepareProgress reports how far Prepare is.
type PrepareProgress struct {
	File             string // current input file
	FileIndex, Files int
	BytesDone        int64 // input bytes consumed so far, over all files
	BytesTotal       int64
	Docs, Tokens     int64 // written so far, both splits
	Done             bool
}

// Prepare tokenises the documents of the inputs and writes them as Arrow IPC file-format
// shards with one column input_ids (list<int32>), one row per document, BOS first. It
// streams: memory holds one document and one record batch per split, never the input.
// Everything is written to a temporary directory next to Out and moved into Out only when
// complete, so an error or a crash leaves Out as it was.
func Prepare(opts PrepareOptions) (*Manifest, error) {
	if opts.Tokenizer == nil {
		return nil, errors.New("data: Prepare needs a tokenizer (--tokenizer PATH)")
	}
	if opts.Out == "" {
		return nil, errors.New("data: no output directory given (--out DIR)")
	}
	if opts.Separator == "" {
		opts.Separator = DefaultSeparator
	}
	text := textOptions{field: opts.TextField, column: opts.TextColumn, fieldGiven: opts.TextField != ""}
	if opts.TextField == "" {
		opts.TextField = DefaultTextField
	}
	text.field, text.separator = opts.TextField, opts.Separator
	if opts.ShardBytes <= 0 {
		opts.ShardBytes = DefaultShardBytes
	}
	if opts.HeldoutFrac < 0 || opts.HeldoutFrac >= 1 || math.IsNaN(opts.HeldoutFrac) {
		return nil, fmt.Errorf("data: held-out fraction %v is outside [0, 1)", opts.HeldoutFrac)
	}
	if opts.SplitByBytes < 0 || opts.SplitByBytes > 1 || math.IsNaN(opts.SplitByBytes) {
		return nil, fmt.Errorf("data: split-by-bytes %v is outside (0, 1]; 0.85 puts the first 85%% of the bytes in train", opts.SplitByBytes)
	}
	if opts.SplitByBytes > 0 && opts.HeldoutFrac > 0 {
		return nil, errors.New("data: give either a held-out fraction or split-by-bytes, not both")
	}
	if opts.batchTokens <= 0 {
		opts.batchTokens = int(min(max(opts.ShardBytes/4/8, 1024), 1<<20))
	}
	inputs, err := expandInputs(opts.Inputs, opts.Format)
	if err != nil {
		return nil, err
	}
	oldFiles, err := checkOutDir(opts.Out, opts.Overwrite)
	if err != nil {
		return nil, err
	}
	tmp, err := makeTempSibling(opts.Out, "prepare")
	if err != nil {
		return nil, err
	}
	for _, d := range []string{filepath.Join(tmp, SplitTrain), filepath.Join(tmp, SplitHeldout)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("data: creating %s: %w", d, err)
		}
	}

	m := &Manifest{
		FormatVersion: ManifestFormatVersion,
		Tokenizer: TokenizerInfo{
			Path:        opts.TokenizerPath,
			VocabSize:   opts.Tokenizer.VocabSize(),
			BOS:         opts.Tokenizer.BOS(),
			EOS:         opts.Tokenizer.EOS(),
			Fingerprint: TokenizerFingerprint(opts.Tokenizer),
		},
		AddBOS: true,
		AddEOS: opts.AddEOS,
		Splits: map[string]Split{},
	}
	if opts.TokenizerPath != "" {
		if m.Tokenizer.FileSHA256, err = fileSHA256(opts.TokenizerPath); err != nil {
			return nil, fmt.Errorf("data: hashing the tokenizer file: %w", err)
		}
	}
	formats := map[string]bool{}
	var totalBytes int64
	for _, in := range inputs {
		formats[in.format] = true
		totalBytes += in.size
		switch in.format {
		case FormatTxt:
			m.Separator = opts.Separator
		case FormatJSONL:
			m.TextField = opts.TextField
		case FormatParquet:
			if text.parquetColumn() == opts.TextField {
				m.TextField = opts.TextField // as earlier versions recorded it
			}
		}
	}
	for f := range formats {
		if m.Format != "" {
			m.Format = "mixed"
			break
		}
		m.Format = f
	}
	switch {
	case opts.SplitByBytes > 0:
		m.SplitRule = SplitRule{Kind: "bytes", Value: opts.SplitByBytes}
	case opts.HeldoutFrac > 0:
		m.SplitRule = SplitRule{Kind: "fraction", Value: opts.HeldoutFrac, Seed: opts.Seed}
	default:
		m.SplitRule = SplitRule{Kind: "none"}
	}

	writers := map[string]*shardWriter{
		SplitTrain:   newShardWriter(tmp, SplitTrain, opts.ShardBytes, opts.batchTokens),
		SplitHeldout: newShardWriter(tmp, SplitHeldout, opts.ShardBytes, opts.batchTokens),
	}
	defer func() {
		for _, w := range writers {
			w.abort()
		}
		os.RemoveAll(tmp) // empty after a successful swap; the partial output otherwise
	}()

	splitBytes := int64(math.Floor(opts.SplitByBytes * float64(totalBytes)))
	var (
		base, docIndex int64
		docs, tokens   int64
		ids32          []int32
	)
	progress := func(file string, i int, done int64, final bool) {
		if opts.Progress != nil {
			opts.Progress(PrepareProgress{File: file, FileIndex: i, Files: len(inputs), BytesDone: done,
				BytesTotal: totalBytes, Docs: docs, Tokens: tokens, Done: final})
		}
	}
	for i, in := range inputs {
		var fileDocs int64
		column, err := readDocuments(in, text, func(d document) error {
			ids := opts.Tokenizer.Encode(d.text, true, opts.AddEOS)
			ids32 = ids32[:0]
			for _, id := range ids {
				ids32 = append(ids32, int32(id))
			}
			split := SplitTrain
			switch m.SplitRule.Kind {
			case "bytes":
				if base+d.offset >= splitBytes {
					split = SplitHeldout
				}
			case "fraction":
				if newSplitMix(opts.Seed, uint64(docIndex)).float64() < opts.HeldoutFrac {
					split = SplitHeldout
				}
			}
			docIndex++
			if err := writers[split].add(ids32); err != nil {
				return err
			}
			fileDocs++
			docs++
			tokens += int64(len(ids32))
			if docs%1024 == 0 {
				progress(in.path, i, base+d.offset, false)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if in.format == FormatArrow || (in.format == FormatParquet && m.TextField == "") {
			if m.TextColumn == "" {
				m.TextColumn = column
			} else if m.TextColumn != column {
				m.TextColumn = "(per source)"
			}
		}
		m.Sources = append(m.Sources, SourceInfo{Path: in.path, Bytes: in.size, Docs: fileDocs, Column: column})
		base += in.size
		progress(in.path, i, base, false)
	}
	if docs == 0 {
		what := "check the text field (--text-field) or column (--text-column)"
		if formats[FormatTxt] {
			what = "check that the files hold text and the --separator"
		}
		return nil, fmt.Errorf("data: the inputs hold no documents, so nothing was written; %s", what)
	}
	for name, w := range writers {
		s, err := w.finish()
		if err != nil {
			return nil, err
		}
		m.Splits[name] = s
	}
	if err := writeManifest(tmp, m); err != nil {
		return nil, fmt.Errorf("data: writing the manifest: %w", err)
	}
	if err := swapIn(tmp, opts.Out, oldFiles, m.Files()); err != nil {
		return nil, err
	}
	progress("", len(inputs), base, true)
	return m, nil
}

// TokenSchema is the schema of prepared shards.
var TokenSchema = arrow.NewSchema([]arrow.Field{
	{Name: TokenColumn, Type: arrow.ListOf(arrow.PrimitiveTypes.Int32)},
}, nil)

// shardWriter writes one split's shards, rotating at a size limit. Files are written under
// a .tmp name and renamed when complete, so a crash never leaves a truncated shard.
type shardWriter struct {
	out, split  string
	limit       int64
	batchTokens int

	file    *os.File
	w       *ipc.FileWriter
	list    *array.ListBuilder
	values  *array.Int32Builder
	pending int // tokens in the builder

	cur    ShardInfo
	shards []ShardInfo
	docs   int64
	tokens int64
}

func newShardWriter(out, split string, limit int64, batchTokens int) *shardWriter {
	return &shardWriter{out: out, split: split, limit: limit, batchTokens: batchTokens}
}

func (s *shardWriter) shardPath(i int) (rel, abs string) {
	rel = filepath.Join(s.split, fmt.Sprintf("shard-%05d.arrow", i))
	return rel, filepath.Join(s.out, rel)
}

func (s *shardWriter) add(ids []int32) error {
	if s.w == nil {
		if err := s.open(); err != nil {
			return err
		}
	}
	s.list.Append(true)
	s.values.AppendValues(ids, nil)
	s.pending += len(ids)
	s.cur.Docs++
	s.cur.Tokens += int64(len(ids))
	if s.pending >= s.batchTokens {
		if err := s.flush(); err != nil {
			return err
		}
	}
	// 4 bytes per token plus 4 per offset is what a shard costs, less a little metadata.
	if 4*(s.cur.Tokens+s.cur.Docs) >= s.limit {
		return s.closeShard()
	}
	return nil
}

func (s *shardWriter) open() error {
	_, abs := s.shardPath(len(s.shards))
	f, err := os.Create(abs + ".tmp")
	if err != nil {
		return fmt.Errorf("data: creating shard: %w", err)
	}
	w, err := ipc.NewFileWriter(f, ipc.WithSchema(TokenSchema))
	if err != nil {
		f.Close()
		return err
	}
	s.file, s.w = f, w
	s.list = array.NewListBuilder(memory.DefaultAllocator, arrow.PrimitiveTypes.Int32)
	s.values = s.list.ValueBuilder().(*array.Int32Builder)
	s.cur = ShardInfo{}
	return nil
}

func (s *shardWriter) flush() error {
	if s.list == nil || s.list.Len() == 0 {
		return nil
	}
	arr := s.list.NewArray()
	defer arr.Release()
	rec := array.NewRecord(TokenSchema, []arrow.Array{arr}, int64(arr.Len()))
	defer rec.Release()
	s.pending = 0
	if err := s.w.Write(rec); err != nil {
		return fmt.Errorf("data: writing shard: %w", err)
	}
	return nil
}

func (s *shardWriter) closeShard() error {
	if s.w == nil {
		return nil
	}
	if err := s.flush(); err != nil {
		return err
	}
	s.list.Release()
	s.list, s.values = nil, nil
	err := s.w.Close()
	s.w = nil
	if cerr := s.file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("data: closing shard: %w", err)
	}
	rel, abs := s.shardPath(len(s.shards))
	if err := os.Rename(abs+".tmp", abs); err != nil {
		return err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return err
	}
	s.cur.File, s.cur.Bytes = filepath.ToSlash(rel), st.Size()
	s.shards = append(s.shards, s.cur)
	s.docs += s.cur.Docs
	s.tokens += s.cur.Tokens
	s.file = nil
	return nil
}

func (s *shardWriter) finish() (Split, error) {
	if err := s.closeShard(); err != nil {
		return Split{}, err
	}
	return Split{Docs: s.docs, Tokens: s.tokens, Shards: append([]ShardInfo{}, s.shards...)}, nil
}

// abort removes a half-written shard after an error (a no-op after finish).
func (s *shardWriter) abort() {
	if s.w == nil {
		return
	}
	s.w.Close()
	s.file.Close()
	_, abs := s.shardPath(len(s.shards))
	os.Remove(abs + ".tmp")
	if s.list != nil {
		s.list.Release()
	}
	s.w = nil
}
