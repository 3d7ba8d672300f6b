package data

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The Arrow library trusts the lengths inside IPC flatbuffers: a corrupt schema claiming 2^31
// fields makes it allocate them (found by FuzzArrowIPCStream). These checks walk the tables
// and vectors of Message and Footer flatbuffers that the library decodes and make sure every
// offset and vector lies inside the buffer, before the library sees it.

var errFlatbuf = errors.New("corrupt flatbuffer")

// Type union codes of the view types (Schema.fbs).
const (
	fbTypeBinaryView = 23
	fbTypeUtf8View   = 24
)

// maxFieldDepth bounds the nesting of a schema's fields (real schemas nest a few levels).
const maxFieldDepth = 64

type fbuf []byte

func (b fbuf) u32(pos int64) (int64, error) {
	if pos < 0 || pos+4 > int64(len(b)) {
		return 0, errFlatbuf
	}
	return int64(binary.LittleEndian.Uint32(b[pos:])), nil
}

// fbTable is a table at pos with its vtable checked.
type fbTable struct {
	b       fbuf
	pos, vt int64
	vtSize  int64
}

func (b fbuf) table(pos int64) (fbTable, error) {
	so, err := b.u32(pos)
	if err != nil {
		return fbTable{}, err
	}
	vt := pos - int64(int32(uint32(so)))
	if vt < 0 || vt+4 > int64(len(b)) {
		return fbTable{}, errFlatbuf
	}
	vs := int64(binary.LittleEndian.Uint16(b[vt:]))
	ts := int64(binary.LittleEndian.Uint16(b[vt+2:]))
	if vs < 4 || vs%2 != 0 || vt+vs > int64(len(b)) || pos+ts > int64(len(b)) {
		return fbTable{}, errFlatbuf
	}
	return fbTable{b: b, pos: pos, vt: vt, vtSize: vs}, nil
}

// field returns the position of field i and whether it is present.
func (t fbTable) field(i int) (int64, bool, error) {
	o := int64(4 + 2*i)
	if o+2 > t.vtSize {
		return 0, false, nil
	}
	fo := int64(binary.LittleEndian.Uint16(t.b[t.vt+o:]))
	if fo == 0 {
		return 0, false, nil
	}
	if t.pos+fo >= int64(len(t.b)) {
		return 0, false, errFlatbuf
	}
	return t.pos + fo, true, nil
}

// ref follows the offset stored in field i (a table, vector or string).
func (t fbTable) ref(i int) (int64, bool, error) {
	p, ok, err := t.field(i)
	if !ok || err != nil {
		return 0, ok, err
	}
	off, err := t.b.u32(p)
	if err != nil {
		return 0, false, err
	}
	return p + off, true, nil
}

func (t fbTable) subtable(i int) (fbTable, bool, error) {
	p, ok, err := t.ref(i)
	if !ok || err != nil {
		return fbTable{}, ok, err
	}
	st, err := t.b.table(p)
	return st, err == nil, err
}

// vector checks the vector in field i (elements of elem bytes) and returns its element start
// and length.
func (t fbTable) vector(i int, elem int64) (int64, int64, error) {
	p, ok, err := t.ref(i)
	if !ok || err != nil {
		return 0, 0, err
	}
	n, err := t.b.u32(p)
	if err != nil {
		return 0, 0, err
	}
	if p+4+n*elem > int64(len(t.b)) {
		return 0, 0, errFlatbuf
	}
	return p + 4, n, nil
}

// tables checks a vector of tables in field i with check.
func (t fbTable) tables(i int, check func(fbTable) error) error {
	start, n, err := t.vector(i, 4)
	if err != nil {
		return err
	}
	for k := int64(0); k < n; k++ {
		off, err := t.b.u32(start + 4*k)
		if err != nil {
			return err
		}
		st, err := t.b.table(start + 4*k + off)
		if err != nil {
			return err
		}
		if check != nil {
			if err := check(st); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkKeyValues(t fbTable, i int) error {
	return t.tables(i, func(kv fbTable) error {
		if _, _, err := kv.vector(0, 1); err != nil {
			return err
		}
		_, _, err := kv.vector(1, 1)
		return err
	})
}

// checkField checks a field and its children. budget counts the fields still allowed: a
// flatbuffer may reference one table many times, so a small buffer can describe an
// exponentially large tree of fields, which the Arrow library would walk.
func checkField(f fbTable, depth int, budget *int) error {
	if depth > maxFieldDepth {
		return fmt.Errorf("fields nested deeper than %d", maxFieldDepth)
	}
	if *budget--; *budget < 0 {
		return errors.New("more fields than the schema's size can hold (shared tables)")
	}
	if _, _, err := f.vector(0, 1); err != nil { // name
		return err
	}
	if p, ok, err := f.field(2); err != nil { // type_type
		return err
	} else if ok && (f.b[p] == fbTypeBinaryView || f.b[p] == fbTypeUtf8View) {
		// Their arrays take a count of data buffers from the batch's variadicBufferCounts,
		// which the library reads past the end of that vector and then allocates.
		return errors.New("binary_view/string_view columns are not supported (cast them to binary/string)")
	}
	if _, _, err := f.subtable(3); err != nil { // type
		return err
	}
	if d, ok, err := f.subtable(4); err != nil { // dictionary
		return err
	} else if ok {
		if _, _, err := d.subtable(1); err != nil {
			return err
		}
	}
	if err := f.tables(5, func(c fbTable) error { return checkField(c, depth+1, budget) }); err != nil {
		return err
	}
	return checkKeyValues(f, 6)
}

func checkSchema(s fbTable) error {
	budget := len(s.b)/8 + 16 // a field table takes well over 8 bytes
	if err := s.tables(1, func(f fbTable) error { return checkField(f, 0, &budget) }); err != nil {
		return err
	}
	if err := checkKeyValues(s, 2); err != nil {
		return err
	}
	_, _, err := s.vector(3, 8)
	return err
}

// i64 reads the int64 field i of t (0 when absent).
func (t fbTable) i64(i int) (int64, error) {
	p, ok, err := t.field(i)
	if !ok || err != nil {
		return 0, err
	}
	if p+8 > int64(len(t.b)) {
		return 0, errFlatbuf
	}
	return int64(binary.LittleEndian.Uint64(t.b[p:])), nil
}

// checkRecordBatch checks a RecordBatch whose message has a body of body bytes. Row counts
// are bounded by the body (a validity bitmap holds 8 rows a byte, offsets 1 row per 4
// bytes): a corrupt length of 2^40 all-null rows would otherwise be iterated row by row.
func checkRecordBatch(r fbTable, body int64) error {
	limit := 8*max(body, 0) + 1024
	n, err := r.i64(0)
	if err != nil {
		return err
	}
	if n < 0 || n > limit {
		return fmt.Errorf("a record batch of %d rows in a %d-byte body", n, body)
	}
	start, cnt, err := r.vector(1, 16)
	if err != nil {
		return err
	}
	for k := int64(0); k < cnt; k++ {
		node := r.b[start+16*k:]
		l, nulls := int64(binary.LittleEndian.Uint64(node)), int64(binary.LittleEndian.Uint64(node[8:]))
		if l < 0 || l > limit || nulls < 0 || nulls > l {
			return fmt.Errorf("a column of %d values (%d null) in a %d-byte body", l, nulls, body)
		}
	}
	// Buffers (offset, length) must lie inside the body: the library allocates a buffer's
	// claimed length before reading it from the body.
	bstart, nbuf, err := r.vector(2, 16)
	if err != nil {
		return err
	}
	for k := int64(0); k < nbuf; k++ {
		buf := r.b[bstart+16*k:]
		o, l := int64(binary.LittleEndian.Uint64(buf)), int64(binary.LittleEndian.Uint64(buf[8:]))
		if o < 0 || l < 0 || o > body || l > body-o {
			return fmt.Errorf("buffer %d claims %d bytes at offset %d of a %d-byte body", k, l, o, body)
		}
	}
	// variadicBufferCounts: the library makes a slice of each count.
	vstart, nv, err := r.vector(4, 8)
	if err != nil {
		return err
	}
	for k := int64(0); k < nv; k++ {
		if c := int64(binary.LittleEndian.Uint64(r.b[vstart+8*k:])); c < 0 || c > nbuf {
			return fmt.Errorf("a variadic buffer count of %d in a batch of %d buffers", c, nbuf)
		}
	}
	_, _, err = r.subtable(3) // compression
	return err
}

// checkMessage verifies the flatbuffer of one IPC Message.
func checkMessage(b []byte) error {
	root, err := fbuf(b).u32(0)
	if err != nil {
		return err
	}
	m, err := fbuf(b).table(root)
	if err != nil {
		return err
	}
	var htype byte
	if p, ok, err := m.field(1); err != nil {
		return err
	} else if ok {
		htype = b[p]
	}
	h, ok, err := m.subtable(2)
	if err != nil {
		return err
	}
	body, err := m.i64(3)
	if err != nil {
		return err
	}
	if ok {
		switch htype {
		case 1:
			err = checkSchema(h)
		case 2:
			var rb fbTable
			if rb, ok, err = h.subtable(1); err == nil && ok {
				err = checkRecordBatch(rb, body)
			}
		case 3:
			err = checkRecordBatch(h, body)
		}
		if err != nil {
			return err
		}
	}
	return checkKeyValues(m, 4)
}

// checkArrowFile verifies the footer of an Arrow IPC file and the message of every block it
// lists, reading only those bytes.
func checkArrowFile(r io.ReaderAt, size int64) error {
	const tail = 10 // int32 footer length + "ARROW1"
	if size < int64(len(arrowFileMagic))+tail {
		return errors.New("too short for an Arrow IPC file")
	}
	var t [tail]byte
	if _, err := r.ReadAt(t[:], size-tail); err != nil {
		return err
	}
	if string(t[4:]) != string(arrowFileMagic) {
		return errors.New("no ARROW1 magic at the end (truncated?)")
	}
	n := int64(int32(binary.LittleEndian.Uint32(t[:4])))
	if n <= 0 || n > size-tail-int64(len(arrowFileMagic)) {
		return fmt.Errorf("footer length %d does not fit the file", n)
	}
	footer := make([]byte, n)
	if _, err := r.ReadAt(footer, size-tail-n); err != nil {
		return err
	}
	root, err := fbuf(footer).u32(0)
	if err != nil {
		return err
	}
	ft, err := fbuf(footer).table(root)
	if err != nil {
		return err
	}
	if s, ok, err := ft.subtable(1); err != nil {
		return err
	} else if ok {
		if err := checkSchema(s); err != nil {
			return err
		}
	}
	for _, vi := range []int{2, 3} { // dictionaries, recordBatches: Block{offset i64, metaDataLength i32, pad, bodyLength i64}
		start, cnt, err := ft.vector(vi, 24)
		if err != nil {
			return err
		}
		for k := int64(0); k < cnt; k++ {
			blk := footer[start+24*k:]
			off := int64(binary.LittleEndian.Uint64(blk))
			ml := int64(int32(binary.LittleEndian.Uint32(blk[8:])))
			body := int64(binary.LittleEndian.Uint64(blk[16:]))
			if off < 0 || ml < 8 || body < 0 || off > size || ml > size-off || body > size-off-ml {
				return fmt.Errorf("block %d does not fit the file", k)
			}
			meta := make([]byte, ml)
			if _, err := r.ReadAt(meta, off); err != nil {
				return err
			}
			skip := 4
			if binary.LittleEndian.Uint32(meta) == 0xFFFFFFFF {
				skip = 8
			}
			if err := checkMessage(meta[skip:]); err != nil {
				return fmt.Errorf("block %d: %w", k, err)
			}
		}
	}
	return checkKeyValues(ft, 4)
}
