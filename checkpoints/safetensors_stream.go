package checkpoints

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"

	"github.com/dmc-project/dmc/model"
)

type stEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// ReadSafetensorsInto streams an F32 safetensors file into dst, which must name exactly the
// file's tensors with the same shapes (in any order): how training checkpoints are restored
// in bounded memory through their own filesystem.
func ReadSafetensorsInto(r io.Reader, dst []model.Tensor[float32]) error {
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
	byName := make(map[string]*model.Tensor[float32], len(dst))
	for i := range dst {
		byName[dst[i].Name] = &dst[i]
	}
	type placed struct {
		e stEntry
		t *model.Tensor[float32]
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
		if !equalInts(e.Shape, t.Shape) {
			return fmt.Errorf("tensor %q has shape %v in the checkpoint but %v in the model (was it written for another model config?)", name, e.Shape, t.Shape)
		}
		if e.Offsets[1]-e.Offsets[0] != int64(len(t.Data))*4 {
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
			return fmt.Errorf("tensor %q starts at byte %d, expected %d (non-contiguous data)", p.t.Name, p.e.Offsets[0], pos)
		}
		d := p.t.Data
		for i := 0; i < len(d); {
			n := min(len(buf)/4, len(d)-i)
			if _, err := io.ReadFull(br, buf[:4*n]); err != nil {
				return fmt.Errorf("tensor %q: %w", p.t.Name, err)
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
