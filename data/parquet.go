package data

import (
	"context"
	"fmt"
	"os"

	"github.com/apache/arrow/go/v17/arrow"
	"github.com/apache/arrow/go/v17/arrow/memory"
	"github.com/apache/arrow/go/v17/parquet"
	"github.com/apache/arrow/go/v17/parquet/file"
	"github.com/apache/arrow/go/v17/parquet/pqarrow"
)

// Parquet inputs are read with the Arrow library's Parquet reader, which trusts the file's
// metadata. Found by FuzzReadParquet: pqarrow's RowGroup.ReadTable decodes pages on a
// goroutine of its own, so a panic on a corrupt page header (a DATA_PAGE without its
// data_page_header: a nil dereference) killed the process, out of reach of any recover. So
// here:
//   - the column is read on the caller's goroutine, through a ColumnReader, and every call
//     into the library is guarded (parquetText.guard) to turn its panics into an error
//     naming the file;
//   - the metadata is checked before any data is read (checkMeta): a column chunk's byte
//     range must lie inside the file (the library allocates the chunk's claimed size up
//     front), row counts are non-negative, bounded and add up to the footer's;
//   - rows are read parquetBatchRows at a time, so the library's reservations follow the
//     batch, not a row group's claimed size;
//   - every buffer the library allocates goes through parquetAlloc, which refuses (panics,
//     then guarded) a single allocation above maxParquetAlloc: page sizes and value
//     counts come from page headers, which cannot be checked without decoding them.

const (
	parquetBatchRows = 1024
	// maxParquetAlloc bounds one buffer of the Parquet reader: a page, a dictionary, or the
	// values of parquetBatchRows rows (documents are at most maxDocumentBytes each, and real
	// pages hold about a MiB).
	maxParquetAlloc = 1 << 30
	// maxParquetRowGroupRows bounds the rows of one row group (pyarrow's largest default
	// was 64 Mi rows); a corrupt count would otherwise have us iterate 2^40 null rows.
	maxParquetRowGroupRows = 1 << 28
)

// boundedAllocator is the Go allocator refusing (with a panic, for the reader's guard) any
// single allocation above limit bytes.
type boundedAllocator struct {
	memory.Allocator
	limit int
}

func (a boundedAllocator) check(n int) {
	if n < 0 || n > a.limit {
		panic(fmt.Sprintf("refused to allocate %d bytes (more than %d MiB for one buffer: corrupt sizes)", n, a.limit>>20))
	}
}

func (a boundedAllocator) Allocate(n int) []byte {
	a.check(n)
	return a.Allocator.Allocate(n)
}

func (a boundedAllocator) Reallocate(n int, b []byte) []byte {
	a.check(n)
	return a.Allocator.Reallocate(n, b)
}

var parquetAlloc memory.Allocator = boundedAllocator{memory.NewGoAllocator(), maxParquetAlloc}

// arrowAlloc is the allocator of the Arrow IPC readers of a file of size bytes. Bodies and
// buffers are checked to lie inside the file (fbverify.go), but a compressed buffer states
// its uncompressed length in its first 8 bytes, which the library allocates before
// decompressing: one buffer may take the file's size, or 1 GiB when that is more.
func arrowAlloc(size int64) memory.Allocator {
	return boundedAllocator{memory.DefaultAllocator, int(max(size, 1<<30))}
}

// parquetText reads one string column of a Parquet file by row group.
type parquetText struct {
	path   string
	pf     *file.Reader
	fr     *pqarrow.FileReader
	column string
	field  int // index of the column among the top-level fields
	leaf   int // index of its leaf column
}

// guard runs f, a call into the Parquet library, turning a panic into an error that names
// the file.
func (p *parquetText) guard(what string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("data: %s: corrupt Parquet data (%s: %v)", p.path, what, r)
		}
	}()
	return f()
}

// guardRowGroup is guard for reading row group rg, naming the file and row group in errors.
func (p *parquetText) guardRowGroup(rg int, f func() error) error {
	return p.guard(fmt.Sprintf("row group %d", rg), func() error {
		if err := f(); err != nil {
			return fmt.Errorf("data: %s row group %d: %w", p.path, rg, err)
		}
		return nil
	})
}

func openParquetText(path, column string) (*parquetText, error) {
	// Not file.OpenParquetFile: it leaks the open file when the footer is bad.
	src, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	st, err := src.Stat()
	if err != nil {
		src.Close()
		return nil, fmt.Errorf("data: %w", err)
	}
	p := &parquetText{path: path}
	ok := false
	defer func() {
		if !ok {
			src.Close()
		}
	}()
	err = p.guard("reading the footer", func() (err error) {
		props := parquet.NewReaderProperties(parquetAlloc)
		if p.pf, err = file.NewParquetReader(src, file.WithReadProps(props)); err != nil {
			return fmt.Errorf("data: %s is not a readable Parquet file: %w", path, err)
		}
		p.fr, err = pqarrow.NewFileReader(p.pf, pqarrow.ArrowReadProperties{BatchSize: parquetBatchRows}, parquetAlloc)
		if err != nil {
			return fmt.Errorf("data: %s: %w", path, err)
		}
		sc, err := p.fr.Schema()
		if err != nil {
			return fmt.Errorf("data: %s: %w", path, err)
		}
		if p.column, p.field, err = pickTextColumn(sc, column, path); err != nil {
			return err
		}
		p.leaf = p.pf.MetaData().Schema.ColumnIndexByName(p.column)
		if p.leaf < 0 || p.field >= len(p.fr.Manifest.Fields) || p.fr.Manifest.Fields[p.field].ColIndex != p.leaf {
			return fmt.Errorf("data: %s: column %q is not a top-level Parquet column; pass a text column with --text-column NAME", path, p.column)
		}
		return p.checkMeta(st.Size())
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return p, nil
}

// checkMeta checks what the library would trust in the metadata of the text column: its
// byte range in every row group, and the row counts.
func (p *parquetText) checkMeta(size int64) error {
	md := p.pf.MetaData()
	var rows int64
	for rg := 0; rg < len(md.RowGroups); rg++ {
		g := md.RowGroup(rg)
		n := g.NumRows()
		if n < 0 || n > maxParquetRowGroupRows {
			return fmt.Errorf("data: %s: row group %d claims %d rows (corrupt metadata?)", p.path, rg, n)
		}
		rows += n
		cc, err := g.ColumnChunk(p.leaf)
		if err != nil {
			return fmt.Errorf("data: %s: row group %d: %w", p.path, rg, err)
		}
		start, length := cc.DataPageOffset(), cc.TotalCompressedSize()
		if cc.HasDictionaryPage() && cc.DictionaryPageOffset() > 0 && cc.DictionaryPageOffset() < start {
			start = cc.DictionaryPageOffset()
		}
		if start < 0 || length < 0 || start > size || length > size-start {
			return fmt.Errorf("data: %s: row group %d: column %q claims %d bytes at offset %d of a %d-byte file (corrupt or truncated)",
				p.path, rg, p.column, length, start, size)
		}
	}
	if rows != md.NumRows {
		return fmt.Errorf("data: %s: the row groups hold %d rows, the footer says %d (corrupt metadata?)", p.path, rows, md.NumRows)
	}
	return nil
}

func (p *parquetText) close() { p.pf.Close() }

// rowGroup calls fn for every row of row group rg, in order.
func (p *parquetText) rowGroup(rg int, fn func(text string, valid bool) error) error {
	if rg < 0 || rg >= p.pf.NumRowGroups() {
		return fmt.Errorf("data: %s has no row group %d", p.path, rg)
	}
	want := p.pf.MetaData().RowGroup(rg).NumRows()
	var rdr *pqarrow.ColumnReader
	err := p.guardRowGroup(rg, func() (err error) {
		rdr, err = p.fr.GetFieldReader(context.Background(), p.field, map[int]bool{p.leaf: true}, []int{rg})
		if err == nil && rdr == nil {
			err = fmt.Errorf("no reader for column %q", p.column)
		}
		return err
	})
	if err != nil {
		return err
	}
	defer p.guard("releasing a reader", func() error { rdr.Release(); return nil })
	for read := int64(0); read < want; {
		var chunk *arrow.Chunked
		err := p.guardRowGroup(rg, func() (err error) {
			chunk, err = rdr.NextBatch(min(parquetBatchRows, want-read))
			return err
		})
		if err != nil {
			return err
		}
		n := int64(chunk.Len())
		err = p.rows(chunk, fn)
		chunk.Release()
		if err != nil {
			return err
		}
		if n == 0 {
			break // fewer rows than the metadata claims: what is there was read
		}
		read += n
	}
	return nil
}

// rows calls fn for every row of one batch.
func (p *parquetText) rows(chunk *arrow.Chunked, fn func(text string, valid bool) error) error {
	for _, a := range chunk.Chunks() {
		c, ok := asStrings(a)
		if !ok {
			return fmt.Errorf("data: %s: column %q is %s, not a string", p.path, p.column, a.DataType())
		}
		for i := 0; i < c.Len(); i++ {
			var err error
			if c.IsValid(i) {
				err = fn(c.Value(i), true)
			} else {
				err = fn("", false)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}
