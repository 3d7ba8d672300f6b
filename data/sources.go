package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"unicode"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
)

// Input formats understood by Prepare (FormatArrow is in format.go).
const (
	FormatTxt     = "txt"
	FormatJSONL   = "jsonl"
	FormatParquet = "parquet"
)

// DefaultSeparator separates documents in .txt inputs (the TinyStories convention).
const DefaultSeparator = "<|endoftext|>"

// DefaultTextField is the text field of .jsonl inputs and the preferred text column of
// Parquet and Arrow inputs.
const DefaultTextField = "text"

// maxDocumentBytes bounds one document: a .txt input without any separator in 256 MiB is
// almost certainly a wrong --separator, and holding it would defeat streaming.
const maxDocumentBytes = 256 << 20

// formatOf tells the input format from a file name (directory walks go by name): the
// extension, after a compression extension (book.txt.xz is text).
func formatOf(path string) string { return extFormat(innerName(path)) }

type inputFile struct {
	path        string // as given; for FormatArrow it may end in ":SPLIT"
	format      string
	size        int64  // bytes on disk (of all its shard files for FormatArrow)
	compression string // "" or a Compression* constant
	// dataSize is the size of the data: size, or for a compressed file the decompressed
	// size, which is -1 until measured (only the byte split rule needs it up front).
	dataSize int64
}

// isHFDir reports whether dir is a Hugging Face save_to_disk directory.
func isHFDir(dir string) bool {
	for _, name := range []string{"dataset_dict.json", "state.json"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err == nil && !st.IsDir() {
			return true
		}
	}
	return false
}

// arrowInput opens an Arrow input (file, directory or Hugging Face save_to_disk folder,
// "PATH:SPLIT" allowed) and sizes it by its shard files.
func arrowInput(path string) (inputFile, error) {
	ds, err := OpenWith(path, OpenOptions{AnyColumns: true})
	if err != nil {
		return inputFile{}, err
	}
	in := inputFile{path: path, format: FormatArrow}
	for _, s := range ds.Shards() {
		if st, err := os.Stat(s); err == nil {
			in.size += st.Size()
		}
	}
	in.dataSize = in.size
	return in, nil
}

// expandInputs turns files, directories and glob patterns into an ordered list of input
// files. A file named explicitly, or matched by a pattern, is recognised by content when
// its extension does not say (DetectFormat). A Hugging Face save_to_disk directory
// (state.json or dataset_dict.json; "DIR:SPLIT" picks a split) is one Arrow input. Other
// directories are walked recursively and contribute, in sorted path order, the files whose
// name (less a compression extension) has a known format (or the given format); hidden
// files are skipped. An input that does not exist and holds *, ? or [ is a pattern
// (expandGlob). A file compressed with gzip, xz, zstd or bzip2 (by its magic bytes) is read
// through its decompressor.
func expandInputs(inputs []string, format string) ([]inputFile, error) {
	if len(inputs) == 0 {
		return nil, errors.New("data: no input files given; pass one or more .txt, .jsonl, .parquet or Arrow files (.gz, .xz, .zst or .bz2 compressed text too), directories or quoted patterns ('corpus/**/*.txt.xz')")
	}
	switch format {
	case "", FormatTxt, FormatJSONL, FormatParquet, FormatArrow:
	default:
		return nil, fmt.Errorf("data: unknown input format %q; use txt, jsonl, parquet or arrow (or leave it empty to tell by content)", format)
	}
	var out []inputFile
	var skippedArchives []string
	add := func(path string, explicit bool) error {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		f := format
		if !explicit {
			name := formatOf(path)
			if name == "" || (format != "" && name != format) {
				// A directory walk takes the files of known (or the given) format, but data
				// in an archive it cannot read (x.txt.zip) is not skipped silently.
				ext := strings.ToLower(filepath.Ext(path))
				if a, ok := archiveExts[ext]; ok {
					if extFormat(strings.TrimSuffix(path, filepath.Ext(path))) != "" {
						return archiveError(path, a, "")
					}
					skippedArchives = append(skippedArchives, path)
				}
				return nil
			}
			f = name
		}
		if f == FormatArrow && compressionExt(path) == "" {
			in, err := arrowInput(path)
			if err != nil {
				return err
			}
			out = append(out, in)
			return nil
		}
		comp, err := sniffCompression(path)
		if err != nil {
			return err
		}
		if comp != "" {
			if f, err = compressedFormat(path, comp, f); err != nil {
				return err
			}
			out = append(out, inputFile{path: path, format: f, size: st.Size(), compression: comp, dataSize: -1})
			return nil
		}
		if f == "" {
			if f, err = resolveFormat(path); err != nil {
				return err
			}
		}
		if f == FormatArrow {
			in, err := arrowInput(path)
			if err != nil {
				return err
			}
			out = append(out, in)
			return nil
		}
		out = append(out, inputFile{path: path, format: f, size: st.Size(), dataSize: st.Size()})
		return nil
	}
	for _, in := range inputs {
		st, err := os.Stat(in)
		if err != nil {
			// DIR:SPLIT of a Hugging Face DatasetDict.
			if i := strings.LastIndex(in, ":"); i > 0 && isHFDir(in[:i]) {
				a, aerr := arrowInput(in)
				if aerr != nil {
					return nil, aerr
				}
				out = append(out, a)
				continue
			}
			if errors.Is(err, fs.ErrNotExist) && hasGlobMeta(in) {
				files, gerr := expandGlob(in)
				if gerr != nil {
					return nil, gerr
				}
				if len(files) == 0 {
					return nil, fmt.Errorf("data: pattern %s matches no files; check it (* and ? stay within one folder, ** matches any depth, hidden files need a pattern that starts with a dot)", in)
				}
				for _, p := range files {
					if err := add(p, true); err != nil {
						return nil, err
					}
				}
				continue
			}
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("data: input %s does not exist; check the path", in)
			}
			return nil, fmt.Errorf("data: input %s: %w", in, err)
		}
		if !st.IsDir() {
			if err := add(in, true); err != nil {
				return nil, err
			}
			continue
		}
		if _, err := os.Stat(filepath.Join(in, ManifestName)); err == nil {
			return nil, fmt.Errorf("data: %s is already prepared data (it has %s); train on it directly instead of preparing it again", in, ManifestName)
		}
		if isHFDir(in) {
			a, err := arrowInput(in)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
			continue
		}
		var files []string
		err = filepath.WalkDir(in, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if strings.HasPrefix(d.Name(), ".") && p != in {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() && p != in {
				if _, err := os.Stat(filepath.Join(p, ManifestName)); err == nil {
					return filepath.SkipDir // prepared shards (e.g. an earlier --out inside the corpus) are not input
				}
			}
			if d.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("data: walking %s: %w", in, err)
		}
		sort.Strings(files)
		n := len(out)
		skippedArchives = skippedArchives[:0]
		for _, p := range files {
			if err := add(p, false); err != nil {
				return nil, err
			}
		}
		if len(out) == n {
			hint := ""
			if len(skippedArchives) > 0 {
				hint = fmt.Sprintf(" (it holds %d archive(s) dmc does not read, such as %s: extract them first)", len(skippedArchives), skippedArchives[0])
			}
			return nil, fmt.Errorf("data: directory %s holds no .txt, .jsonl, .parquet or .arrow files (compressed or not)%s; point at the files (any name is recognised by content then, e.g. with a quoted pattern '%s/**/*') or pass --format",
				in, hint, filepath.ToSlash(in))
		}
	}
	return out, nil
}

// document is one text document and the byte offset (within its file) where it starts.
type document struct {
	text   string
	offset int64
	line   int // line number of a .jsonl document (0 for other formats)
}

// textOptions names the text inside structured inputs.
type textOptions struct {
	separator  string // .txt document separator
	field      string // .jsonl field
	column     string // Parquet/Arrow column; "" picks by the default rule (pickTextColumn)
	fieldGiven bool   // field was set explicitly (for Parquet it then names the column)
}

// parquetColumn is the column asked for in a Parquet input: the text column, else an
// explicitly given text field (what earlier versions used for Parquet), else "" (pick).
func (o textOptions) parquetColumn() string {
	if o.column != "" {
		return o.column
	}
	if o.fieldGiven {
		return o.field
	}
	return ""
}

// readDocuments calls fn for every document of one input file, in order, holding at most
// one document (plus a read buffer, the decompressor's window or one record batch) in
// memory. Bytes read from a text or JSON lines file are added to read as they are read
// (read may be nil). It returns the column read for columnar inputs, and the bytes of data
// read (decompressed, for a compressed file).
func readDocuments(in inputFile, o textOptions, read *atomic.Int64, fn func(document) error) (string, int64, error) {
	switch in.format {
	case FormatTxt, FormatJSONL:
		s, err := openStream(in.path, in.compression, read)
		if err != nil {
			return "", 0, err
		}
		defer s.Close()
		if in.format == FormatTxt {
			err = readTxtFrom(s, in.path, 0, o.separator, fn)
		} else {
			err = readJSONLFrom(s, in.path, 0, 1, o.field, fn)
		}
		var be *BinaryError
		if errors.As(err, &be) {
			be.Compression = in.compression
		}
		return "", s.dataBytes(), err
	case FormatParquet:
		column, err := readParquetColumn(in, o.parquetColumn(), fn)
		return column, in.size, err
	case FormatArrow:
		column, err := readArrowText(in, o.column, fn)
		return column, in.size, err
	}
	return "", 0, fmt.Errorf("data: unknown input format %q", in.format)
}

// readTxtFrom splits a text stream at every occurrence of separator. Each document is
// trimmed of surrounding white space; empty documents (e.g. after a trailing separator) are
// skipped. Bytes that are not UTF-8 text (NUL, invalid sequences) are refused with their
// offset. r's first byte is at offset base of the file path.
func readTxtFrom(r io.Reader, path string, base int64, separator string, fn func(document) error) error {
	if separator == "" {
		return errors.New("data: empty separator; pass the string that separates documents (--separator), e.g. <|endoftext|>")
	}
	sep := []byte(separator)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, min(1<<20, maxDocumentBytes)), maxDocumentBytes)
	consumed := base // bytes of the file before the current token
	var start int64
	first := base == 0
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		start = consumed
		if i := bytes.Index(data, sep); i >= 0 {
			consumed += int64(i + len(sep))
			return i + len(sep), data[:i], nil
		}
		if atEOF && len(data) > 0 {
			consumed += int64(len(data))
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		tok := sc.Bytes()
		if first { // a UTF-8 byte order mark is not text
			first = false
			if bytes.HasPrefix(tok, utf8BOM) {
				tok = tok[len(utf8BOM):]
				start += int64(len(utf8BOM))
			}
		}
		if off := firstNonText(tok, true); off >= 0 {
			return &BinaryError{Path: path, Offset: start + int64(off), Byte: tok[off]}
		}
		// Trim what strings.TrimSpace trims (Unicode white space: \v, \f, U+0085, U+00A0,
		// U+3000...), and count the same leading bytes for the offset: trimming only
		// " \t\r\n" there put a document "\v0" at the \v (found by FuzzReadText).
		left := bytes.TrimLeftFunc(tok, unicode.IsSpace)
		text := string(bytes.TrimRightFunc(left, unicode.IsSpace))
		if text == "" {
			continue
		}
		if err := fn(document{text: text, offset: start + int64(len(tok)-len(left))}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("data: %s: found no separator %q within %d MiB; check --separator (the documents must be separated by it)",
				path, separator, maxDocumentBytes>>20)
		}
		return fmt.Errorf("data: reading %s: %w", path, err)
	}
	return nil
}

// maxJSONLine bounds one line of a .jsonl input.
const maxJSONLine = maxDocumentBytes

// readJSONLFrom reads one JSON object per line from r and takes its string field textField;
// r's first byte is at offset base of the file path and starts line number firstLine.
func readJSONLFrom(r io.Reader, path string, base int64, firstLine int, textField string, fn func(document) error) error {
	br := bufio.NewReaderSize(r, 1<<20)
	offset := base
	var line []byte
	for lineNo := firstLine; ; lineNo++ {
		var err error
		line = line[:0]
		for {
			chunk, rerr := br.ReadSlice('\n')
			line = append(line, chunk...)
			if len(line) > maxJSONLine {
				return fmt.Errorf("data: %s line %d is longer than %d MiB; is it really JSON lines?", path, lineNo, maxJSONLine>>20)
			}
			if rerr == bufio.ErrBufferFull {
				continue
			}
			err = rerr
			break
		}
		start := offset
		offset += int64(len(line))
		if len(bytes.TrimSpace(line)) > 0 {
			var obj map[string]json.RawMessage
			if jerr := json.Unmarshal(line, &obj); jerr != nil {
				return fmt.Errorf("data: %s line %d is not a JSON object: %v (each line of a .jsonl file must be one object)", path, lineNo, jerr)
			}
			raw, ok := obj[textField]
			if !ok {
				return fmt.Errorf("data: %s line %d has no field %q; its fields are %s; pass the text field with --text-field NAME",
					path, lineNo, textField, strings.Join(sortedKeys(obj), ", "))
			}
			var text string
			if jerr := json.Unmarshal(raw, &text); jerr != nil {
				return fmt.Errorf("data: %s line %d: field %q is not a string (%.40s); pass a text field with --text-field NAME (its fields are %s)",
					path, lineNo, textField, raw, strings.Join(sortedKeys(obj), ", "))
			}
			if text != "" {
				if err := fn(document{text: text, offset: start, line: lineNo}); err != nil {
					return err
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("data: reading %s: %w", path, err)
		}
	}
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// pickTextColumn chooses the text column of a columnar input: the named one (which must be
// a string column), else the column "text", else the only string column.
func pickTextColumn(sc *arrow.Schema, column, path string) (string, int, error) {
	if column != "" {
		idx := sc.FieldIndices(column)
		if len(idx) == 0 {
			return "", -1, fmt.Errorf("data: %s has no column %q; its columns are %s; pass the text column with --text-column NAME",
				path, column, describeFields(sc.Fields()))
		}
		if t := sc.Field(idx[0]).Type; !isText(t) {
			return "", -1, fmt.Errorf("data: %s: column %q is %s, not a string; pass a text column with --text-column NAME%s",
				path, column, t, stringColumnsHint(sc))
		}
		return column, idx[0], nil
	}
	if idx := sc.FieldIndices(DefaultTextField); len(idx) > 0 && isText(sc.Field(idx[0]).Type) {
		return DefaultTextField, idx[0], nil
	}
	var names []string
	var at []int
	for i, f := range sc.Fields() {
		if isText(f.Type) {
			names, at = append(names, f.Name), append(at, i)
		}
	}
	switch len(names) {
	case 1:
		return names[0], at[0], nil
	case 0:
		hint := "it holds no text to tokenise"
		if idx := sc.FieldIndices(TokenColumn); len(idx) > 0 && isTokenList(sc.Field(idx[0]).Type) {
			hint = "it already holds token ids (" + TokenColumn + "): train on it directly"
		}
		return "", -1, fmt.Errorf("data: %s has no string column; its columns are %s; %s", path, describeFields(sc.Fields()), hint)
	}
	return "", -1, fmt.Errorf("data: %s has several string columns (%s) and none is named %q; pick one with --text-column NAME",
		path, strings.Join(names, ", "), DefaultTextField)
}

func stringColumnsHint(sc *arrow.Schema) string {
	var names []string
	for _, f := range sc.Fields() {
		if isText(f.Type) {
			names = append(names, f.Name)
		}
	}
	if len(names) == 0 {
		return " (it has no string column)"
	}
	return " (its string columns are " + strings.Join(names, ", ") + ")"
}

// stringValues gives access to a string or large_string array.
type stringValues interface {
	Len() int
	IsValid(int) bool
	Value(int) string
}

func asStrings(a arrow.Array) (stringValues, bool) {
	switch c := a.(type) {
	case *array.String:
		return c, true
	case *array.LargeString:
		return c, true
	}
	return nil, false
}

// readParquet reads a string column one row group at a time. Parquet has no byte offset
// per row, so a row's offset is its row position scaled to the file size (row i of n starts
// at i*size/n), which is what the byte split rule needs.
func readParquet(in inputFile, column string, fn func(document) error) error {
	_, err := readParquetColumn(in, column, fn)
	return err
}

// readParquetColumn is readParquet, returning the column read.
func readParquetColumn(in inputFile, column string, fn func(document) error) (string, error) {
	pq, err := openParquetText(in.path, column)
	if err != nil {
		return "", err
	}
	defer pq.close()
	total := pq.pf.NumRows()
	var row int64
	for rg := 0; rg < pq.pf.NumRowGroups(); rg++ {
		err := pq.rowGroup(rg, func(text string, valid bool) error {
			offset := int64(0)
			if total > 0 {
				offset = row * in.size / total
			}
			row++
			if !valid || text == "" {
				return nil
			}
			return fn(document{text: text, offset: offset})
		})
		if err != nil {
			return "", err
		}
	}
	return pq.column, nil
}

// readArrowText reads a string column of an Arrow input (file, stream, directory of shards
// or Hugging Face save_to_disk folder) through the streaming reader, one record batch at a
// time. A row's offset is its position scaled to the input size, batch by batch.
func readArrowText(in inputFile, column string, fn func(document) error) (string, error) {
	ds, err := OpenWith(in.path, OpenOptions{AnyColumns: true})
	if err != nil {
		return "", err
	}
	name, idx, err := pickTextColumn(ds.Schema, column, in.path)
	if err != nil {
		return "", err
	}
	nb := int64(ds.NumBatches())
	var b int64
	for rec, err := range ds.Records() {
		if err != nil {
			return "", err
		}
		if idx >= int(rec.NumCols()) {
			return "", fmt.Errorf("data: %s: a record batch has %d columns, the schema %d", in.path, rec.NumCols(), ds.Schema.NumFields())
		}
		c, ok := asStrings(rec.Column(idx))
		if !ok {
			return "", fmt.Errorf("data: %s: column %q is %s, not a string", in.path, name, rec.Column(idx).DataType())
		}
		n := int64(c.Len())
		for i := int64(0); i < n; i++ {
			if !c.IsValid(int(i)) || c.Value(int(i)) == "" {
				continue
			}
			offset := int64((float64(b) + float64(i)/float64(n)) / float64(nb) * float64(in.size))
			if err := fn(document{text: c.Value(int(i)), offset: offset}); err != nil {
				return "", err
			}
		}
		b++
	}
	return name, nil
}

func describeFields(fields []arrow.Field) string {
	if len(fields) == 0 {
		return "(none)"
	}
	parts := make([]string, len(fields))
	for i, f := range fields {
		parts[i] = fmt.Sprintf("%s (%s)", f.Name, f.Type)
	}
	return strings.Join(parts, ", ")
}
