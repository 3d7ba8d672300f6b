package checkpoints

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"sync"

	"github.com/x448/float16"
)

// DType is a safetensors element type name ("F32", "BF16", ...).
type DType string

// The element types this package converts to and from float32. Other safetensors dtypes are
// parsed (so a header can be inspected) but cannot be read as weights.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	F64  DType = "F64"
)

// dtypeSizes lists every dtype of the safetensors specification with its element size in bytes.
var dtypeSizes = map[DType]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"F64": 8, "I64": 8, "U64": 8,
}

// Size is the element size in bytes, 0 for an unknown dtype.
func (d DType) Size() int { return dtypeSizes[d] }

// convertible reports whether tensors of this dtype can be read as float32.
func (d DType) convertible() bool { return d == F32 || d == F16 || d == BF16 || d == F64 }

// ParseDType accepts a storage dtype for writing: F32/F16/BF16 in any case, or the PyTorch
// names float32, float16, bfloat16 (also fp32, fp16, bf16).
func ParseDType(s string) (DType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "f32", "fp32", "float32", "float":
		return F32, nil
	case "f16", "fp16", "float16", "half":
		return F16, nil
	case "bf16", "bfloat16":
		return BF16, nil
	}
	return "", fmt.Errorf("unsupported storage dtype %q: use one of f32, f16, bf16", s)
}

// torchName is the config.json "torch_dtype" spelling of a storage dtype.
func (d DType) torchName() string {
	switch d {
	case F16:
		return "float16"
	case BF16:
		return "bfloat16"
	case F64:
		return "float64"
	}
	return "float32"
}

// Float32ToBF16 rounds f to bfloat16 with round-to-nearest-even. NaN stays NaN (quiet, sign
// kept); values beyond the largest finite bfloat16 round to ±Inf as IEEE rounding requires.
func Float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: truncating could clear the mantissa and make an Inf
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// BF16ToFloat32 widens a bfloat16 exactly.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float32ToF16 rounds f to IEEE half precision (round-to-nearest-even, via x448/float16).
func Float32ToF16(f float32) uint16 { return float16.Fromfloat32(f).Bits() }

// F16ToFloat32 widens an IEEE half exactly.
func F16ToFloat32(h uint16) float32 { return float16.Frombits(h).Float32() }

// f16Table maps every half to its float32 (256 KiB, built on first use): a table lookup is
// several times faster than widening bit by bit, which matters for 13 GB fp16 checkpoints.
var f16Table = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for h := range t {
		t[h] = F16ToFloat32(uint16(h))
	}
	return &t
})

// decodeFloats converts little-endian raw elements of dtype d into dst (len(raw) = len(dst)*size).
func decodeFloats(dst []float32, raw []byte, d DType) {
	switch d {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	case F16:
		table := f16Table()
		for i := range dst {
			dst[i] = table[binary.LittleEndian.Uint16(raw[2*i:])]
		}
	case BF16:
		for i := range dst {
			dst[i] = BF16ToFloat32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:])))
		}
	default:
		panic("checkpoints: decodeFloats on unconvertible dtype " + string(d))
	}
}

// encodeFloats writes src as little-endian elements of dtype d into raw.
func encodeFloats(raw []byte, src []float32, d DType) {
	switch d {
	case F32:
		for i, v := range src {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	case F16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(raw[2*i:], Float32ToF16(v))
		}
	case BF16:
		for i, v := range src {
			binary.LittleEndian.PutUint16(raw[2*i:], Float32ToBF16(v))
		}
	case F64:
		for i, v := range src {
			binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(float64(v)))
		}
	default:
		panic("checkpoints: encodeFloats on unconvertible dtype " + string(d))
	}
}
