package data

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/array"
	"github.com/apache/arrow/go/v17/arrow/memory"
)

// Document groups of a text or JSON lines file read on the fly: a group ends after this
// many documents or bytes, whichever comes first.
const (
	docBatchDocs  = 1024
	docBatchBytes = 4 << 20
)

// docFileFormat tells whether a single file given to OpenWith is read as documents:
// FormatTxt, FormatJSONL or FormatParquet, or "" for Arrow data. A .txt/.jsonl/.parquet name
// decides; an .arrow name (or Arrow content) means Arrow; other names go by content.
func docFileFormat(path string) (string, error) {
	switch ext := extFormat(path); ext {
	case FormatTxt, FormatJSONL, FormatParquet:
		return ext, nil
	case FormatArrow:
		return "", nil
	}
	comp := compressionExt(path)
	if head, err := readHead(path, headBytes); err == nil && magicCompression(head) != "" {
		comp = magicCompression(head)
	}
	if comp != "" {
		return "", fmt.Errorf("data: %s is %s-compressed; this reader needs the data uncompressed: prepare it with dmc data prepare (which reads .gz, .xz, .zst and .bz2 files directly), or decompress it first", path, comp)
	}
	f, err := resolveFormat(path)
	var be *BinaryError
	switch {
	case errors.As(err, &be):
		return "", nil // neither text nor known: the Arrow reader explains
	case err != nil:
		return "", err
	case f == FormatArrow:
		return "", nil
	}
	return f, nil
}

// openDocShard indexes a text, JSON lines or Parquet file as a shard of document groups.
// Text and JSON lines files are read once, checking every document (UTF-8 text, JSON
// objects with the text field), and the byte offset of every group's first document kept.
func openDocShard(path, format string, opts OpenOptions) (*shard, error) {
	s := &shard{path: path, format: format}
	if format == FormatParquet {
		pq, err := openParquetText(path, opts.TextColumn)
		if err != nil {
			return nil, err
		}
		defer pq.close()
		s.column, s.numBatches = pq.column, pq.pf.NumRowGroups()
		s.schema = arrow.NewSchema([]arrow.Field{{Name: s.column, Type: arrow.BinaryTypes.String, Nullable: true}}, nil)
		return s, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	var n int
	var groupStart int64
	mark := func(d document) error {
		if n == 0 || n%docBatchDocs == 0 || d.offset-groupStart >= docBatchBytes {
			s.offsets = append(s.offsets, d.offset)
			s.lines = append(s.lines, d.line)
			groupStart, n = d.offset, 0
		}
		n++
		return nil
	}
	switch format {
	case FormatTxt:
		s.separator, s.column = opts.Separator, DefaultTextField
		if s.separator == "" {
			s.separator = DefaultSeparator
		}
		err = readTxtFrom(f, path, 0, s.separator, mark)
	case FormatJSONL:
		s.column = opts.TextColumn
		if s.column == "" {
			s.column = DefaultTextField
		}
		err = readJSONLFrom(f, path, 0, 1, s.column, mark)
	default:
		return nil, fmt.Errorf("data: %s: unknown document format %q", path, format)
	}
	if err != nil {
		return nil, err
	}
	s.numBatches = len(s.offsets)
	s.offsets = append(s.offsets, st.Size())
	s.schema = arrow.NewSchema([]arrow.Field{{Name: s.column, Type: arrow.BinaryTypes.String, Nullable: true}}, nil)
	return s, nil
}

// readDocs returns document group b of the text shard si as a record with one string
// column; the caller owns (and must Release) it.
func (br *batchReader) readDocs(si, b int) (rec arrow.Record, err error) {
	s := br.d.shards[si]
	if br.shard != si {
		br.close()
		br.shard = si
		if s.format == FormatParquet {
			if br.pq, err = openParquetText(s.path, s.column); err != nil {
				br.shard = -1
				return nil, err
			}
		} else if br.f, err = os.Open(s.path); err != nil {
			br.shard = -1
			return nil, fmt.Errorf("data: %w", err)
		}
	}
	sb := array.NewStringBuilder(memory.DefaultAllocator)
	defer sb.Release()
	add := func(d document) error {
		sb.Append(d.text)
		return nil
	}
	switch s.format {
	case FormatParquet:
		err = br.pq.rowGroup(b, func(text string, valid bool) error {
			if valid && text != "" {
				sb.Append(text)
			}
			return nil
		})
	case FormatTxt, FormatJSONL:
		if b < 0 || b >= s.numBatches {
			return nil, fmt.Errorf("data: %s has no document group %d", s.path, b)
		}
		sec := io.NewSectionReader(br.f, s.offsets[b], s.offsets[b+1]-s.offsets[b])
		if s.format == FormatTxt {
			err = readTxtFrom(sec, s.path, s.offsets[b], s.separator, add)
		} else {
			err = readJSONLFrom(sec, s.path, s.offsets[b], s.lines[b], s.column, add)
		}
	}
	if err != nil {
		return nil, err
	}
	arr := sb.NewArray()
	defer arr.Release()
	return array.NewRecord(s.schema, []arrow.Array{arr}, int64(arr.Len())), nil
}
