package data

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
)

// Input formats understood by Prepare.
const (
	FormatTxt     = "txt"
	FormatJSONL   = "jsonl"
	FormatParquet = "parquet"
)

// DefaultSeparator separates documents in .txt inputs (the TinyStories convention).
const DefaultSeparator = "<|endoftext|>"

// DefaultTextField is the text field of .jsonl inputs and text column of .parquet inputs.
const DefaultTextField = "text"

// maxDocumentBytes bounds one document: a .txt input without any separator in 256 MiB is
// almost certainly a wrong --separator, and holding it would defeat streaming.
const maxDocumentBytes = 256 << 20

// formatOf tells the input format from a file name.
func formatOf(path string) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".txt", ".text":
		return FormatTxt
	case ".jsonl", ".ndjson":
		return FormatJSONL
	case ".parquet", ".pq":
		return FormatParquet
	}
	return ""
}

type inputFile struct {
	path   string
	format string
	size   int64
}

// expandInputs turns files and directories into an ordered list of input files. Directories
// are walked recursively in lexical order and contribute the files of the given format (or
// of any known format when format is empty); hidden files are skipped.
func expandInputs(inputs []string, format string) ([]inputFile, error) {
	if len(inputs) == 0 {
		return nil, errors.New("data: no input files given; pass one or more .txt, .jsonl or .parquet files or directories")
	}
	switch format {
	case "", FormatTxt, FormatJSONL, FormatParquet:
	default:
		return nil, fmt.Errorf("data: unknown input format %q; use txt, jsonl or parquet (or leave it empty to tell by extension)", format)
	}
	var out []inputFile
	add := func(path string, explicit bool) error {
		st, err := os.Stat(path)
		if err != nil {
			return err
		}
		f := format
		if f == "" {
			f = formatOf(path)
		}
		if f == "" {
			if explicit {
				return fmt.Errorf("data: cannot tell the format of %s from its extension; name it .txt, .jsonl or .parquet or pass the format (--format txt|jsonl|parquet)", path)
			}
			return nil
		}
		if !explicit && format != "" && formatOf(path) != format {
			return nil // a directory walk with an explicit format takes only that format's files
		}
		out = append(out, inputFile{path: path, format: f, size: st.Size()})
		return nil
	}
	for _, in := range inputs {
		st, err := os.Stat(in)
		if err != nil {
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
		for _, p := range files {
			if err := add(p, false); err != nil {
				return nil, err
			}
		}
		if len(out) == n {
			return nil, fmt.Errorf("data: directory %s holds no .txt, .jsonl or .parquet files; point at the files or pass --format", in)
		}
	}
	return out, nil
}

// document is one text document and the byte offset (within its file) where it starts.
type document struct {
	text   string
	offset int64
}

// readDocuments calls fn for every document of one input file, in order, holding at most
// one document (plus a read buffer) in memory.
func readDocuments(in inputFile, separator, textField string, fn func(document) error) error {
	switch in.format {
	case FormatTxt:
		return readTxt(in.path, separator, fn)
	case FormatJSONL:
		return readJSONL(in.path, textField, fn)
	case FormatParquet:
		return readParquet(in, textField, fn)
	}
	return fmt.Errorf("data: unknown input format %q", in.format)
}

// readTxt splits a text file at every occurrence of separator. Each document is trimmed of
// surrounding white space; empty documents (e.g. after a trailing separator) are skipped.
func readTxt(path, separator string, fn func(document) error) error {
	if separator == "" {
		return errors.New("data: empty separator; pass the string that separates documents (--separator), e.g. <|endoftext|>")
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sep := []byte(separator)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), maxDocumentBytes)
	var consumed int64 // bytes of the file before the current token
	var start int64
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
		lead := len(tok) - len(bytes.TrimLeft(tok, " \t\r\n"))
		text := strings.TrimSpace(string(tok))
		if text == "" {
			continue
		}
		if err := fn(document{text: text, offset: start + int64(lead)}); err != nil {
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

// readJSONL reads one JSON object per line and takes its string field textField.
func readJSONL(path, textField string, fn func(document) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var offset int64
	for lineNo := 1; ; lineNo++ {
		line, err := r.ReadBytes('\n')
		start := offset
		offset += int64(len(line))
		if len(bytes.TrimSpace(line)) > 0 {
			var obj map[string]json.RawMessage
			if jerr := json.Unmarshal(line, &obj); jerr != nil {
				return fmt.Errorf("data: %s line %d is not a JSON object: %v (each line of a .jsonl file must be one object)", path, lineNo, jerr)
			}
			raw, ok := obj[textField]
			if !ok {
				return fmt.Errorf("data: %s line %d has no field %q; its fields are %s; pass the text field with --text-field",
					path, lineNo, textField, strings.Join(sortedKeys(obj), ", "))
			}
			var text string
			if jerr := json.Unmarshal(raw, &text); jerr != nil {
				return fmt.Errorf("data: %s line %d: field %q is not a string (%.40s); pass a text field with --text-field", path, lineNo, textField, raw)
			}
			if text != "" {
				if err := fn(document{text: text, offset: start}); err != nil {
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

// readParquet reads the string column textField one row group at a time. Parquet has no
// byte offset per row, so a row's offset is its row position scaled to the file size
// (row i of n starts at i*size/n), which is what the byte split rule needs.
func readParquet(in inputFile, textField string, fn func(document) error) (err error) {
	pf, err := file.OpenParquetFile(in.path, false)
	if err != nil {
		return fmt.Errorf("data: %s is not a readable Parquet file: %w", in.path, err)
	}
	defer pf.Close()
	defer func() {
		if r := recover(); r != nil { // the parquet reader panics on some corrupt files
			err = fmt.Errorf("data: %s: corrupt Parquet data: %v", in.path, r)
		}
	}()
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 4096}, memory.DefaultAllocator)
	if err != nil {
		return fmt.Errorf("data: %s: %w", in.path, err)
	}
	sc, err := fr.Schema()
	if err != nil {
		return fmt.Errorf("data: %s: %w", in.path, err)
	}
	leaf := pf.MetaData().Schema.ColumnIndexByName(textField)
	fields := sc.FieldIndices(textField)
	if leaf < 0 || len(fields) == 0 {
		return fmt.Errorf("data: %s has no column %q; its columns are %s; pass the text column with --text-field",
			in.path, textField, describeFields(sc.Fields()))
	}
	if t := sc.Field(fields[0]).Type.ID(); t != arrow.STRING && t != arrow.LARGE_STRING {
		return fmt.Errorf("data: %s: column %q is %s, not a string; pass a text column with --text-field",
			in.path, textField, sc.Field(fields[0]).Type)
	}
	total := pf.NumRows()
	var row int64
	for rg := 0; rg < pf.NumRowGroups(); rg++ {
		tbl, err := fr.RowGroup(rg).ReadTable(context.Background(), []int{leaf})
		if err != nil {
			return fmt.Errorf("data: %s row group %d: %w", in.path, rg, err)
		}
		err = func() error {
			defer tbl.Release()
			for _, chunk := range tbl.Column(0).Data().Chunks() {
				for i := 0; i < chunk.Len(); i++ {
					var text string
					if chunk.IsValid(i) {
						switch c := chunk.(type) {
						case *array.String:
							text = c.Value(i)
						case *array.LargeString:
							text = c.Value(i)
						}
					}
					offset := int64(0)
					if total > 0 {
						offset = row * in.size / total
					}
					row++
					if text == "" {
						continue
					}
					if err := fn(document{text: text, offset: offset}); err != nil {
						return err
					}
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
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
