package data

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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
	// Inputs are files, directories and glob patterns, read in the given order; a directory
	// or a pattern contributes its files in sorted path order (expandInputs). Files
	// compressed with gzip, xz, zstd or bzip2 are decompressed as they are read.
	Inputs        []string
	Out           string    // output directory (created); gets train/, heldout/ and manifest.json
	Tokenizer     Tokenizer // required; it must be safe for concurrent use when Workers > 1
	TokenizerPath string    // recorded in the manifest (and its file hashed) when set
	Format        string    // "txt", "jsonl", "parquet", "arrow" or "" to tell by extension, else by content (DetectFormat)
	Separator     string    // .txt document separator; "" means DefaultSeparator
	TextField     string    // .jsonl field; "" means DefaultTextField (also a Parquet column when TextColumn is empty, as before)
	// TextColumn is the string column of Parquet and Arrow inputs (Arrow files or streams,
	// Hugging Face save_to_disk directories). "" picks the column "text", else the only
	// string column; with several the error lists them (--text-column NAME).
	TextColumn string
	AddEOS     bool // append EOS to every document (BOS is always prepended)

	// Split rule, at most one of the three. SplitByBytes in (0,1] puts the documents that
	// start in the first SplitByBytes of all input bytes (files concatenated in order,
	// decompressed) into train and the rest into held-out; the TinyStories convention is
	// 0.85. Parquet has no per-row byte offsets, so a Parquet row starts at its row position
	// scaled to the file size. HeldoutFiles in (0,1) holds out whole input files: the
	// round(HeldoutFiles·n) files (at least one, never all) whose paths relative to the
	// inputs' common directory hash lowest with Seed (heldoutFileSet). Otherwise each
	// document is held out with probability HeldoutFrac (0 = no held-out split), decided by
	// a hash of its index and Seed.
	HeldoutFrac  float64
	SplitByBytes float64
	HeldoutFiles float64
	Seed         uint64

	ShardBytes int64 // rotate shards at about this size; 0 means DefaultShardBytes
	// Overwrite replaces an existing prepared directory at Out (--force). The new data is
	// written to a temporary sibling directory and swapped in only when complete; then only
	// the files the old manifest lists are removed, never other files in Out. A directory
	// that holds files but no manifest is refused even with Overwrite.
	Overwrite bool

	// Workers is the number of goroutines that tokenise (0 means runtime.GOMAXPROCS). The
	// documents are still written in input order: the output is the same for any number.
	Workers int

	// Progress, when set, is called now and then (and once at the end with Done set), from
	// one goroutine at a time.
	Progress func(PrepareProgress)

	batchTokens int // tokens per record batch; 0 picks from ShardBytes (tests shrink it)
}

// PrepareProgress reports how far Prepare is.
type PrepareProgress struct {
	File             string // current input file
	FileIndex, Files int
	BytesDone        int64 // input bytes read so far, over all files, as stored (compressed)
	BytesTotal       int64 // the inputs' size as stored (compressed)
	Docs, Tokens     int64 // written so far, both splits
	Done             bool
}

// Split rule kinds recorded in the manifest (SplitRule.Kind).
const (
	SplitRuleNone     = "none"
	SplitRuleFraction = "fraction"
	SplitRuleBytes    = "bytes"
	SplitRuleFiles    = "files"
)

// checkSplitRule validates the split options and returns the rule they give.
func checkSplitRule(opts PrepareOptions) (SplitRule, error) {
	if opts.HeldoutFrac < 0 || opts.HeldoutFrac >= 1 || math.IsNaN(opts.HeldoutFrac) {
		return SplitRule{}, fmt.Errorf("data: held-out fraction %v is outside [0, 1)", opts.HeldoutFrac)
	}
	if opts.SplitByBytes < 0 || opts.SplitByBytes > 1 || math.IsNaN(opts.SplitByBytes) {
		return SplitRule{}, fmt.Errorf("data: split-by-bytes %v is outside (0, 1]; 0.85 puts the first 85%% of the bytes in train", opts.SplitByBytes)
	}
	if opts.HeldoutFiles < 0 || opts.HeldoutFiles >= 1 || math.IsNaN(opts.HeldoutFiles) {
		return SplitRule{}, fmt.Errorf("data: held-out fraction of files %v is outside [0, 1); 0.1 holds out a tenth of the files", opts.HeldoutFiles)
	}
	if opts.SplitByBytes > 0 && opts.HeldoutFrac > 0 {
		return SplitRule{}, errors.New("data: give either a held-out fraction or split-by-bytes, not both")
	}
	if opts.HeldoutFiles > 0 && (opts.HeldoutFrac > 0 || opts.SplitByBytes > 0) {
		other := "a held-out fraction of documents"
		if opts.SplitByBytes > 0 {
			other = "split-by-bytes"
		}
		return SplitRule{}, fmt.Errorf("data: give either a held-out fraction of files or %s, not both", other)
	}
	switch {
	case opts.SplitByBytes > 0:
		return SplitRule{Kind: SplitRuleBytes, Value: opts.SplitByBytes}, nil
	case opts.HeldoutFiles > 0:
		return SplitRule{Kind: SplitRuleFiles, Value: opts.HeldoutFiles, Seed: opts.Seed}, nil
	case opts.HeldoutFrac > 0:
		return SplitRule{Kind: SplitRuleFraction, Value: opts.HeldoutFrac, Seed: opts.Seed}, nil
	}
	return SplitRule{Kind: SplitRuleNone}, nil
}

// heldoutFileSet picks the files held out by the files rule: with n inputs, the
// round(frac·n) of them (at least one, and never all) whose paths relative to the inputs'
// common directory, with forward slashes, have the smallest SHA-256 of seed (8 bytes,
// little endian) followed by the path. So the choice does not depend on the order of the
// inputs, on where the corpus lies, or on the other files' names, only on the number of
// files.
func heldoutFileSet(paths []string, frac float64, seed uint64) ([]bool, error) {
	n := len(paths)
	if n < 2 {
		return nil, fmt.Errorf("data: a held-out fraction of files needs at least two input files, and the inputs are %d; hold out documents instead (--heldout-frac) or give more files", n)
	}
	rels := relativePaths(paths)
	type ranked struct {
		hash uint64
		rel  string
		i    int
	}
	rank := make([]ranked, n)
	var key [8]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	for i, rel := range rels {
		h := sha256.New()
		h.Write(key[:])
		h.Write([]byte(rel))
		rank[i] = ranked{binary.BigEndian.Uint64(h.Sum(nil)), rel, i}
	}
	slices.SortFunc(rank, func(a, b ranked) int {
		if a.hash != b.hash {
			return cmp.Compare(a.hash, b.hash)
		}
		return cmp.Compare(a.rel, b.rel)
	})
	k := min(max(int(math.Round(frac*float64(n))), 1), n-1)
	held := make([]bool, n)
	for _, r := range rank[:k] {
		held[r.i] = true
	}
	return held, nil
}

// relativePaths returns the paths relative to their deepest common directory (absolute
// paths compared), with forward slashes.
func relativePaths(paths []string) []string {
	abs := make([]string, len(paths))
	for i, p := range paths {
		if a, err := filepath.Abs(p); err == nil {
			abs[i] = a
		} else {
			abs[i] = filepath.Clean(p)
		}
	}
	root := filepath.Dir(abs[0])
	for _, a := range abs[1:] {
		for root != filepath.Dir(root) && !strings.HasPrefix(a, root+string(filepath.Separator)) {
			root = filepath.Dir(root)
		}
	}
	rels := make([]string, len(abs))
	for i, a := range abs {
		rel, err := filepath.Rel(root, a)
		if err != nil {
			rel = a
		}
		rels[i] = filepath.ToSlash(rel)
	}
	return rels
}

// Prepare tokenises the documents of the inputs and writes them as Arrow IPC file-format
// shards with one column input_ids (list<int32>), one row per document, BOS first. It
// streams: memory holds the documents being tokenised (a few batches per worker) and one
// record batch per split, never the input. Compressed inputs are decompressed on the fly.
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
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	rule, err := checkSplitRule(opts)
	if err != nil {
		return nil, err
	}
	if opts.batchTokens <= 0 {
		opts.batchTokens = int(min(max(opts.ShardBytes/4/8, 1024), 1<<20))
	}
	inputs, err := expandInputs(opts.Inputs, opts.Format)
	if err != nil {
		return nil, err
	}
	var heldFiles []bool
	if rule.Kind == SplitRuleFiles {
		paths := make([]string, len(inputs))
		for i, in := range inputs {
			paths[i] = in.path
		}
		if heldFiles, err = heldoutFileSet(paths, rule.Value, rule.Seed); err != nil {
			return nil, err
		}
	}
	oldFiles, err := checkOutDir(opts.Out, opts.Overwrite)
	if err != nil {
		return nil, err
	}
	if rule.Kind == SplitRuleBytes {
		// The byte rule needs the total up front: decompress what is compressed to count it.
		if err := measureInputs(inputs, opts.Workers); err != nil {
			return nil, err
		}
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
		AddBOS:    true,
		AddEOS:    opts.AddEOS,
		SplitRule: rule,
		Splits:    map[string]Split{},
	}
	if opts.TokenizerPath != "" {
		if m.Tokenizer.FileSHA256, err = fileSHA256(opts.TokenizerPath); err != nil {
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("data: hashing the tokenizer file: %w", err)
		}
	}
	formats := map[string]bool{}
	var totalBytes, totalData int64
	for _, in := range inputs {
		formats[in.format] = true
		totalBytes += in.size
		totalData += in.dataSize
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

	writers := map[string]*shardWriter{
		SplitTrain:   newShardWriter(tmp, SplitTrain, opts.ShardBytes, opts.batchTokens),
		SplitHeldout: newShardWriter(tmp, SplitHeldout, opts.ShardBytes, opts.batchTokens),
	}

	// Progress state: the reader (this goroutine) and the pipe's writer both report.
	var (
		bytesRead    atomic.Int64 // bytes of the inputs read, as stored
		fileIndex    atomic.Int64
		docs, tokens atomic.Int64
		progressMu   sync.Mutex
	)
	progress := func(final bool) {
		if opts.Progress == nil {
			return
		}
		progressMu.Lock()
		defer progressMu.Unlock()
		i := int(fileIndex.Load())
		pr := PrepareProgress{FileIndex: i, Files: len(inputs), BytesDone: min(bytesRead.Load(), totalBytes),
			BytesTotal: totalBytes, Docs: docs.Load(), Tokens: tokens.Load(), Done: final}
		if i < len(inputs) {
			pr.File = inputs[i].path
		}
		opts.Progress(pr)
	}
	encode := func(dst []int32, text string) []int32 {
		for _, id := range opts.Tokenizer.Encode(text, true, opts.AddEOS) {
			dst = append(dst, int32(id))
		}
		return dst
	}
	pipe := newTokenPipe(opts.Workers, encode, func(split string, ids []int32) error {
		if err := writers[split].add(ids); err != nil {
			return err
		}
		tokens.Add(int64(len(ids)))
		if docs.Add(1)%64 == 0 {
			progress(false)
		}
		return nil
	})
	defer func() {
		pipe.close(true) // a no-op after the successful close below
		for _, w := range writers {
			w.abort()
		}
		os.RemoveAll(tmp) // empty after a successful swap; the partial output otherwise
	}()

	splitBytes := int64(math.Floor(opts.SplitByBytes * float64(totalData)))
	var base, diskBase, docIndex int64
	for i, in := range inputs {
		fileIndex.Store(int64(i))
		bytesRead.Store(diskBase)
		var fileDocs int64
		fileSplit := ""
		if heldFiles != nil {
			fileSplit = SplitTrain
			if heldFiles[i] {
				fileSplit = SplitHeldout
			}
		}
		columnar := in.format == FormatParquet || in.format == FormatArrow
		column, dataBytes, err := readDocuments(in, text, &bytesRead, func(d document) error {
			split := SplitTrain
			switch rule.Kind {
			case SplitRuleBytes:
				if base+d.offset >= splitBytes {
					split = SplitHeldout
				}
			case SplitRuleFraction:
				if newSplitMix(opts.Seed, uint64(docIndex)).float64() < opts.HeldoutFrac {
					split = SplitHeldout
				}
			case SplitRuleFiles:
				split = fileSplit
			}
			docIndex++
			fileDocs++
			if columnar {
				bytesRead.Store(diskBase + d.offset)
			}
			return pipe.add(d.text, split)
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
		src := SourceInfo{Path: in.path, Bytes: in.size, Docs: fileDocs, Column: column, Split: fileSplit}
		if in.compression != "" {
			src.Compression, src.UncompressedBytes = in.compression, dataBytes
		}
		m.Sources = append(m.Sources, src)
		if in.dataSize < 0 {
			in.dataSize = dataBytes
		}
		base += in.dataSize
		diskBase += in.size
		bytesRead.Store(diskBase)
		progress(false)
	}
	if err := pipe.close(false); err != nil {
		return nil, err
	}
	if docs.Load() == 0 {
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
	fileIndex.Store(int64(len(inputs)))
	progress(true)
	return m, nil
}

// measureInputs fills in the decompressed size of every compressed input, decompressing
// several at a time.
func measureInputs(inputs []inputFile, workers int) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, max(workers, 1))
	)
	for i := range inputs {
		if inputs[i].dataSize >= 0 {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(in *inputFile) {
			defer func() { <-sem; wg.Done() }()
			n, err := uncompressedSize(in.path, in.compression)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			in.dataSize = n
		}(&inputs[i])
	}
	wg.Wait()
	return first
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
