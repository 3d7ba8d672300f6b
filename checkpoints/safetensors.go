package checkpoints

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/dmc-project/dmc/internal/atomicfile"
	"github.com/dmc-project/dmc/model"
)

// maxHeaderBytes bounds the JSON header like the reference implementation (100 MB), so a corrupt
// length field cannot make us allocate gigabytes.
const maxHeaderBytes = 100_000_000

// readChunkBytes is how much raw tensor data is converted at a time: a tensor is never held
// twice in full (raw + float32), whatever its size.
const readChunkBytes = 1 << 20

// chunkPool recycles the conversion buffers, so loading a model of hundreds of tensors allocates
// little beyond the weights themselves.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, readChunkBytes); return &b }}

// TensorInfo describes one tensor of a safetensors file. Begin and End are byte offsets into the
// data section (after the header).
type TensorInfo struct {
	Name       string
	DType      DType
	Shape      []int
	Begin, End int64
}

// NumElements is the product of the shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, s := range t.Shape {
		n *= int64(s)
	}
	return n
}

// SafetensorsFile is an open safetensors file whose header has been parsed and validated.
// Tensor data is read on demand with ReadAt, so opening a large checkpoint costs only its header.
// Methods are safe for concurrent use (ReadAt is).
type SafetensorsFile struct {
	path      string
	f         *os.File
	dataStart int64
	tensors   []TensorInfo // in data order
	byName    map[string]int
	metadata  map[string]string
}

// OpenSafetensors opens path and validates its header against the file size.
func OpenSafetensors(path string) (*SafetensorsFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open safetensors: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open safetensors: %w", err)
	}
	sf, err := openSafetensors(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w (the file is not a valid safetensors file; re-download or re-export it)", path, err)
	}
	sf.path = path
	sf.f = f
	return sf, nil
}

func openSafetensors(r io.ReaderAt, size int64) (*SafetensorsFile, error) {
	if size < 8 {
		return nil, fmt.Errorf("file is %d bytes, shorter than the 8-byte header length", size)
	}
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("read header length: %w", err)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > maxHeaderBytes {
		return nil, fmt.Errorf("header length %d exceeds the %d-byte limit", n, maxHeaderBytes)
	}
	if int64(n) > size-8 {
		return nil, fmt.Errorf("header length %d exceeds the %d bytes left in the file (truncated?)", n, size-8)
	}
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	dataStart := 8 + int64(n)
	tensors, meta, err := ParseSafetensorsHeader(hdr, size-dataStart)
	if err != nil {
		return nil, err
	}
	sf := &SafetensorsFile{dataStart: dataStart, tensors: tensors, metadata: meta, byName: make(map[string]int, len(tensors))}
	for i, t := range tensors {
		sf.byName[t.Name] = i
	}
	return sf, nil
}

type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []uint64 `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

// ParseSafetensorsHeader parses and validates a safetensors JSON header for a data section of
// dataLen bytes. It checks what the reference implementation checks: a JSON object starting
// with '{', no duplicate names, known dtypes, offsets that match dtype×shape, and tensors that
// tile the data section exactly (no gaps, no overlap, nothing past the end, no trailing bytes).
// The tensors come back sorted by offset. The optional "__metadata__" is a string→string map.
func ParseSafetensorsHeader(hdr []byte, dataLen int64) ([]TensorInfo, map[string]string, error) {
	if len(hdr) == 0 || hdr[0] != '{' {
		return nil, nil, errors.New("header does not start with '{'")
	}
	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		return nil, nil, fmt.Errorf("header JSON: %w", err)
	}
	var tensors []TensorInfo
	var meta map[string]string
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("header JSON: %w", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("header JSON: expected a key, got %v", tok)
		}
		if seen[name] {
			return nil, nil, fmt.Errorf("header names %q twice", name)
		}
		seen[name] = true
		if name == "__metadata__" {
			if err := dec.Decode(&meta); err != nil {
				return nil, nil, fmt.Errorf("header __metadata__ must map strings to strings: %w", err)
			}
			continue
		}
		var e headerEntry
		if err := dec.Decode(&e); err != nil {
			return nil, nil, fmt.Errorf("header entry %q: %w", name, err)
		}
		t, err := e.info(name)
		if err != nil {
			return nil, nil, err
		}
		tensors = append(tensors, t)
	}
	if _, err := dec.Token(); err != nil { // closing brace
		return nil, nil, fmt.Errorf("header JSON: %w", err)
	}
	// Anything after the object must be the padding spaces writers add for alignment.
	rest := hdr[min(int64(len(hdr)), dec.InputOffset()):]
	if len(bytes.Trim(rest, " \t\r\n")) != 0 {
		return nil, nil, errors.New("header has bytes after its JSON object")
	}
	sort.Slice(tensors, func(i, j int) bool {
		if tensors[i].Begin != tensors[j].Begin {
			return tensors[i].Begin < tensors[j].Begin
		}
		return tensors[i].End < tensors[j].End
	})
	var end int64
	for _, t := range tensors {
		if t.Begin != end {
			if t.Begin < end {
				return nil, nil, fmt.Errorf("tensor %q at bytes [%d,%d) overlaps the previous tensor ending at %d", t.Name, t.Begin, t.End, end)
			}
			return nil, nil, fmt.Errorf("tensor %q starts at byte %d, leaving a gap after byte %d", t.Name, t.Begin, end)
		}
		end = t.End
	}
	if end != dataLen {
		if end > dataLen {
			return nil, nil, fmt.Errorf("tensors need %d data bytes but the file has %d (truncated?)", end, dataLen)
		}
		return nil, nil, fmt.Errorf("file has %d data bytes after the last tensor (trailing garbage)", dataLen-end)
	}
	return tensors, meta, nil
}

func (e headerEntry) info(name string) (TensorInfo, error) {
	d := DType(e.DType)
	if d.Size() == 0 {
		return TensorInfo{}, fmt.Errorf("tensor %q has unknown dtype %q", name, e.DType)
	}
	if e.Shape == nil {
		return TensorInfo{}, fmt.Errorf("tensor %q has no shape", name)
	}
	if len(e.DataOffsets) != 2 {
		return TensorInfo{}, fmt.Errorf("tensor %q: data_offsets must be [begin, end], got %v", name, e.DataOffsets)
	}
	b, en := e.DataOffsets[0], e.DataOffsets[1]
	if b > en {
		return TensorInfo{}, fmt.Errorf("tensor %q: data_offsets begin %d > end %d", name, b, en)
	}
	if en > 1<<62 {
		return TensorInfo{}, fmt.Errorf("tensor %q: data_offsets end %d is absurd", name, en)
	}
	elems := uint64(1)
	shape := make([]int, len(e.Shape))
	for i, s := range e.Shape {
		hi, lo := bits.Mul64(elems, s)
		if s > 1<<62 || hi != 0 || lo > 1<<62 {
			return TensorInfo{}, fmt.Errorf("tensor %q: shape %v is too large", name, e.Shape)
		}
		elems = lo
		shape[i] = int(s)
	}
	hi, nbytes := bits.Mul64(elems, uint64(d.Size()))
	if hi != 0 || nbytes != en-b {
		return TensorInfo{}, fmt.Errorf("tensor %q: %s%v needs %d bytes but data_offsets [%d,%d) hold %d", name, d, e.Shape, elems*uint64(d.Size()), b, en, en-b)
	}
	return TensorInfo{Name: name, DType: d, Shape: shape, Begin: int64(b), End: int64(en)}, nil
}

// Path is the file's path.
func (f *SafetensorsFile) Path() string { return f.path }

// Tensors lists the tensors in data order.
func (f *SafetensorsFile) Tensors() []TensorInfo { return slices.Clone(f.tensors) }

// Names lists the tensor names in data order.
func (f *SafetensorsFile) Names() []string {
	out := make([]string, len(f.tensors))
	for i, t := range f.tensors {
		out[i] = t.Name
	}
	return out
}

// Info returns the description of a tensor.
func (f *SafetensorsFile) Info(name string) (TensorInfo, bool) {
	i, ok := f.byName[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.tensors[i], true
}

// Metadata is the optional "__metadata__" map (nil when absent).
func (f *SafetensorsFile) Metadata() map[string]string { return f.metadata }

// Close releases the file.
func (f *SafetensorsFile) Close() error {
	if f.f == nil {
		return nil
	}
	err := f.f.Close()
	f.f = nil
	return err
}

// ReadFloat32 converts tensor name into dst, which must have exactly its element count. The
// data are read in bounded chunks straight from the file.
func (f *SafetensorsFile) ReadFloat32(name string, dst []float32) error {
	t, ok := f.Info(name)
	if !ok {
		return fmt.Errorf("%s: no tensor named %q", f.path, name)
	}
	if !t.DType.convertible() {
		return fmt.Errorf("%s: tensor %q has dtype %s; only F32, F16, BF16 and F64 can be read as float weights", f.path, name, t.DType)
	}
	if int64(len(dst)) != t.NumElements() {
		return fmt.Errorf("%s: tensor %q has %d elements %v, destination holds %d", f.path, name, t.NumElements(), t.Shape, len(dst))
	}
	size := t.DType.Size()
	per := readChunkBytes / size
	bufp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bufp)
	buf := *bufp
	off := f.dataStart + t.Begin
	for i := 0; i < len(dst); i += per {
		n := min(per, len(dst)-i)
		raw := buf[:n*size]
		if _, err := f.f.ReadAt(raw, off); err != nil {
			return fmt.Errorf("%s: read tensor %q: %w", f.path, name, err)
		}
		decodeFloats(dst[i:i+n], raw, t.DType)
		off += int64(len(raw))
	}
	return nil
}

// Float32 reads a tensor into a new slice.
func (f *SafetensorsFile) Float32(name string) ([]float32, error) {
	t, ok := f.Info(name)
	if !ok {
		return nil, fmt.Errorf("%s: no tensor named %q", f.path, name)
	}
	dst := make([]float32, t.NumElements())
	return dst, f.ReadFloat32(name, dst)
}

// WriteSafetensors writes tensors to path in dtype (F32, F16 or BF16), with optional metadata.
// Tensors are laid out in name order; the header is padded with spaces to a multiple of 8 bytes
// so the data are aligned. The file appears atomically (temporary file, fsync, rename).
func WriteSafetensors(path string, tensors []model.Tensor[float32], dtype DType, metadata map[string]string) error {
	return writeSafetensors(path, tensors, dtype, metadata, nil)
}

// writeSafetensors is WriteSafetensors with an optional per-tensor transform applied just before
// a tensor is written (it must keep the length), so converting a model on the way out holds at
// most one converted tensor in memory.
func writeSafetensors(path string, tensors []model.Tensor[float32], dtype DType, metadata map[string]string, transform func(name string, data []float32) []float32) error {
	if !dtype.convertible() {
		return fmt.Errorf("write safetensors: unsupported dtype %q: use F32, F16 or BF16", dtype)
	}
	return writeAtomic(path, func(w io.Writer) error { return encodeSafetensors(w, tensors, dtype, metadata, transform) })
}

// EncodeSafetensors writes tensors as one safetensors stream to w, in dtype (F32, F16 or BF16),
// laid out in name order (see WriteSafetensors). Training checkpoints use it through their own
// filesystem.
func EncodeSafetensors(w io.Writer, tensors []model.Tensor[float32], dtype DType, metadata map[string]string) error {
	if !dtype.convertible() {
		return fmt.Errorf("write safetensors: unsupported dtype %q: use F32, F16 or BF16", dtype)
	}
	return encodeSafetensors(w, tensors, dtype, metadata, nil)
}

func encodeSafetensors(w io.Writer, tensors []model.Tensor[float32], dtype DType, metadata map[string]string, transform func(name string, data []float32) []float32) error {
	sorted := slices.Clone(tensors)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	hdr, err := encodeHeader(sorted, dtype, metadata)
	if err != nil {
		return fmt.Errorf("write safetensors: %w", err)
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	size := dtype.Size()
	per := readChunkBytes / size
	buf := make([]byte, readChunkBytes)
	for _, t := range sorted {
		data := t.Data
		if transform != nil {
			data = transform(t.Name, data)
		}
		for i := 0; i < len(data); i += per {
			chunk := data[i:min(i+per, len(data))]
			raw := buf[:len(chunk)*size]
			encodeFloats(raw, chunk, dtype)
			if _, err := w.Write(raw); err != nil {
				return err
			}
		}
	}
	return nil
}

func encodeHeader(tensors []model.Tensor[float32], dtype DType, metadata map[string]string) ([]byte, error) {
	entries := make(map[string]any, len(tensors)+1)
	if len(metadata) > 0 {
		entries["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		if t.Name == "__metadata__" {
			return nil, errors.New(`a tensor cannot be named "__metadata__"`)
		}
		if _, dup := entries[t.Name]; dup {
			return nil, fmt.Errorf("tensor %q given twice", t.Name)
		}
		n := 1
		for _, s := range t.Shape {
			if s < 0 {
				return nil, fmt.Errorf("tensor %q has negative shape %v", t.Name, t.Shape)
			}
			n *= s
		}
		if n != len(t.Data) {
			return nil, fmt.Errorf("tensor %q has %d values but shape %v", t.Name, len(t.Data), t.Shape)
		}
		end := off + int64(n*dtype.Size())
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		entries[t.Name] = map[string]any{"dtype": dtype, "shape": shape, "data_offsets": []int64{off, end}}
		off = end
	}
	hdr, err := json.Marshal(entries)
	if err != nil {
		return nil, err
	}
	if pad := (8 - len(hdr)%8) % 8; pad > 0 {
		hdr = append(hdr, bytes.Repeat([]byte{' '}, pad)...)
	}
	return hdr, nil
}

// writeAtomic writes a file atomically and durably (internal/atomicfile).
func writeAtomic(path string, write func(io.Writer) error) error {
	return atomicfile.WriteFunc(path, write)
}

// isSafetensorsName reports whether a file name looks like a safetensors weight file.
func isSafetensorsName(name string) bool { return strings.HasSuffix(name, ".safetensors") }
