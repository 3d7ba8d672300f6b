package trainer

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
)

// A minimal float32-only safetensors writer and streaming reader for training checkpoints
// (8-byte little-endian header length, JSON header padded with spaces to 8 bytes, raw data).
// The files open with any safetensors reader.

type stTensor struct {
	name  string
	shape []int
	data  []float32
}

type stEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

func writeSafetensors(w io.Writer, ts []stTensor, meta map[string]string) error {
	header := make(map[string]any, len(ts)+1)
	if len(meta) > 0 {
		header["__metadata__"] = meta
	}
	var off int64
	for _, t := range ts {
		if _, dup := header[t.name]; dup {
			return fmt.Errorf("safetensors: duplicate tensor name %q", t.name)
		}
		n := int64(len(t.data)) * 4
		shape := t.shape
		if shape == nil {
			shape = []int{} // a scalar: "shape": [] rather than null
		}
		header[t.name] = stEntry{DType: "F32", Shape: shape, Offsets: [2]int64{off, off + n}}
		off += n
	}
	h, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(h)))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := w.Write(h); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for _, t := range ts {
		for i := 0; i < len(t.data); {
			n := min(len(buf)/4, len(t.data)-i)
			for j := 0; j < n; j++ {
				binary.LittleEndian.PutUint32(buf[4*j:], math.Float32bits(t.data[i+j]))
			}
			if _, err := w.Write(buf[:4*n]); err != nil {
				return err
			}
			i += n
		}
	}
	return nil
}

// readSafetensorsInto streams a file written by writeSafetensors into dst, which must name
// exactly the file's tensors with the same shapes (in any order).
func readSafetensorsInto(r io.Reader, dst []stTensor) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var lenBuf [8]byte
	if _, err := io.ReadFull(br, lenBuf[:]); err != nil {
		return fmt.Errorf("safetensors header: %w", err)
	}
	hl := binary.LittleEndian.Uint64(lenBuf[:])
	if hl > 100<<20 {
		return fmt.Errorf("safetensors header of %d bytes is implausible", hl)
	}
	h := make([]byte, hl)
	if _, err := io.ReadFull(br, h); err != nil {
		return fmt.Errorf("safetensors header: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(h, &raw); err != nil {
		return fmt.Errorf("safetensors header: %w", err)
	}
	delete(raw, "__metadata__")
	byName := make(map[string]*stTensor, len(dst))
	for i := range dst {
		byName[dst[i].name] = &dst[i]
	}
	type placed struct {
		e stEntry
		t *stTensor
	}
	var order []placed
	for name, msg := range raw {
		var e stEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return fmt.Errorf("safetensors entry %q: %w", name, err)
		}
		t, ok := byName[name]
		if !ok {
			return fmt.Errorf("checkpoint has tensor %q that the model does not have (was it written for another model config?)", name)
		}
		if e.DType != "F32" {
			return fmt.Errorf("tensor %q has dtype %s, want F32", name, e.DType)
		}
		if !equalInts(e.Shape, t.shape) {
			return fmt.Errorf("tensor %q has shape %v in the checkpoint but %v in the model (was it written for another model config?)", name, e.Shape, t.shape)
		}
		if e.Offsets[1]-e.Offsets[0] != int64(len(t.data))*4 {
			return fmt.Errorf("tensor %q: data_offsets %v do not match its shape", name, e.Offsets)
		}
		order = append(order, placed{e, t})
		delete(byName, name)
	}
	for name := range byName {
		return fmt.Errorf("checkpoint lacks tensor %q that the model has (was it written for another model config?)", name)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].e.Offsets[0] < order[j].e.Offsets[0] })
	var pos int64
	buf := make([]byte, 64<<10)
	for _, p := range order {
		if p.e.Offsets[0] != pos {
			return fmt.Errorf("tensor %q starts at byte %d, expected %d (non-contiguous data)", p.t.name, p.e.Offsets[0], pos)
		}
		d := p.t.data
		for i := 0; i < len(d); {
			n := min(len(buf)/4, len(d)-i)
			if _, err := io.ReadFull(br, buf[:4*n]); err != nil {
				return fmt.Errorf("tensor %q: %w", p.t.name, err)
			}
			for j := 0; j < n; j++ {
				d[i+j] = math.Float32frombits(binary.LittleEndian.Uint32(buf[4*j:]))
			}
			i += n
		}
		pos = p.e.Offsets[1]
	}
	return nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
