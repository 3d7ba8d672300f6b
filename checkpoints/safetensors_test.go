package checkpoints

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dmc-project/dmc/model"
)

// specialValues covers the cases conversions get wrong: signed zeros, infinities, NaN, the
// extremes of each format, subnormals of each format and rounding ties.
func specialValues() []float32 {
	v := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.1, -3.75, 65504, 65520, 1e6,
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32,
		float32(math.Ldexp(1, -24)), float32(math.Ldexp(3, -25)), float32(math.Ldexp(1, -133)),
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0x7f7f8000),
		math.Float32frombits(0x00018000), math.Float32frombits(0x807fffff)}
	for i := 0; i < 41; i++ {
		v = append(v, float32(math.Sin(float64(i)*1.7))*float32(math.Pow(10, float64(i%9-4))))
	}
	return v
}

func sameBits(a, b float32) bool {
	if a != a && b != b {
		return true
	}
	return math.Float32bits(a) == math.Float32bits(b)
}

func TestSafetensorsRoundTrip(t *testing.T) {
	vals := specialValues()
	in := []model.Tensor[float32]{
		{Name: "b.matrix", Shape: []int{4, len(vals) / 4}, Data: vals[:4*(len(vals)/4)]},
		{Name: "a.vector", Shape: []int{3}, Data: []float32{1.5, -2, 3.25}},
		{Name: "scalar", Shape: []int{}, Data: []float32{7}},
		{Name: "empty", Shape: []int{0, 5}, Data: []float32{}},
	}
	meta := map[string]string{"format": "pt", "note": "round trip"}
	for _, dt := range []DType{F32, F16, BF16} {
		t.Run(string(dt), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.safetensors")
			if err := WriteSafetensors(path, in, dt, meta); err != nil {
				t.Fatal(err)
			}
			f, err := OpenSafetensors(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got := f.Metadata(); got["note"] != "round trip" || got["format"] != "pt" {
				t.Errorf("metadata = %v", got)
			}
			if names := f.Names(); !slices.Equal(names, []string{"a.vector", "b.matrix", "empty", "scalar"}) {
				t.Errorf("names in data order = %v", names)
			}
			for _, want := range in {
				info, ok := f.Info(want.Name)
				if !ok || info.DType != dt || !slices.Equal(info.Shape, want.Shape) {
					t.Fatalf("info(%s) = %+v, %v", want.Name, info, ok)
				}
				got, err := f.Float32(want.Name)
				if err != nil {
					t.Fatal(err)
				}
				for i, v := range want.Data {
					var exp float32
					switch dt {
					case F32:
						exp = v
					case F16:
						exp = F16ToFloat32(Float32ToF16(v))
					case BF16:
						exp = BF16ToFloat32(Float32ToBF16(v))
					}
					if !sameBits(got[i], exp) {
						t.Errorf("%s[%d]: wrote %g, read %g (bits %#x), want %g", want.Name, i, v, got[i], math.Float32bits(got[i]), exp)
					}
				}
			}
			// Values the dtype represents come back bit for bit.
			rep := make([]float32, len(vals))
			for i, v := range vals {
				switch dt {
				case F32:
					rep[i] = v
				case F16:
					rep[i] = F16ToFloat32(Float32ToF16(v))
				case BF16:
					rep[i] = BF16ToFloat32(Float32ToBF16(v))
				}
			}
			path2 := filepath.Join(t.TempDir(), "rep.safetensors")
			if err := WriteSafetensors(path2, []model.Tensor[float32]{{Name: "r", Shape: []int{len(rep)}, Data: rep}}, dt, nil); err != nil {
				t.Fatal(err)
			}
			g, err := OpenSafetensors(path2)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			back, err := g.Float32("r")
			if err != nil {
				t.Fatal(err)
			}
			for i := range rep {
				if !sameBits(back[i], rep[i]) {
					t.Errorf("representable value %g came back as %g", rep[i], back[i])
				}
			}
		})
	}
}

// A tensor larger than the conversion chunk is read correctly across chunk boundaries.
func TestSafetensorsChunkedRead(t *testing.T) {
	n := readChunkBytes/2 + 777 // several BF16 chunks... and F32 chunks
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(i%256) - 128 // exactly representable in bf16
	}
	for _, dt := range []DType{F32, BF16} {
		path := filepath.Join(t.TempDir(), "big.safetensors")
		if err := WriteSafetensors(path, []model.Tensor[float32]{{Name: "x", Shape: []int{n}, Data: data}}, dt, nil); err != nil {
			t.Fatal(err)
		}
		f, err := OpenSafetensors(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.Float32("x")
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, data) {
			t.Fatalf("%s: chunked read differs", dt)
		}
	}
}

func TestWriteSafetensorsRejects(t *testing.T) {
	dir := t.TempDir()
	cases := map[string][]model.Tensor[float32]{
		"shape mismatch": {{Name: "x", Shape: []int{2, 2}, Data: []float32{1, 2, 3}}},
		"duplicate":      {{Name: "x", Shape: []int{1}, Data: []float32{1}}, {Name: "x", Shape: []int{1}, Data: []float32{1}}},
		"reserved name":  {{Name: "__metadata__", Shape: []int{1}, Data: []float32{1}}},
	}
	for name, ts := range cases {
		if err := WriteSafetensors(filepath.Join(dir, "x.safetensors"), ts, F32, nil); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if err := WriteSafetensors(filepath.Join(dir, "x.safetensors"), nil, DType("I8"), nil); err == nil {
		t.Error("I8: no error")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed writes left files behind: %v", entries)
	}
}

// stFile assembles a safetensors file from a raw header and n data bytes.
func stFile(header string, n int) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(make([]byte, n))
	return b.Bytes()
}

func TestSafetensorsCorrupt(t *testing.T) {
	long := make([]byte, 8)
	binary.LittleEndian.PutUint64(long, 1<<40)
	tests := []struct {
		name string
		file []byte
		want string // substring of the error; "" means valid
	}{
		{"valid", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8), ""},
		{"valid empty", stFile(`{}`, 0), ""},
		{"valid padded with metadata", stFile(`{"__metadata__":{"k":"v"},"a":{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]}}   `, 4), ""},
		{"valid out of order", stFile(`{"b":{"dtype":"F16","shape":[1],"data_offsets":[2,4]},"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}`, 4), ""},
		{"too short", []byte{1, 2, 3}, "shorter than the 8-byte"},
		{"huge header length", append(long, '{', '}'), "exceeds the 100000000-byte limit"},
		{"header past end", stFile(`{}`, 0)[:9], "exceeds the 1 bytes left"},
		{"not an object", stFile(`[1]`, 0), "does not start with '{'"},
		{"broken JSON", stFile(`{"a":{"dtype":"F32",`, 0), "header"},
		{"garbage after object", stFile(`{} x`, 0), "bytes after its JSON object"},
		{"unknown dtype", stFile(`{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}`, 4), "unknown dtype"},
		{"no shape", stFile(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, 4), "has no shape"},
		{"three offsets", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, 4), "data_offsets must be"},
		{"negative offset", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, 4), "header entry"},
		{"begin after end", stFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, 4), "begin 4 > end 0"},
		{"size mismatch", stFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8), "needs 12 bytes"},
		{"shape overflow", stFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, 8), "too large"},
		{"gap", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "gap"},
		{"overlap", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "overlaps"},
		{"truncated data", stFile(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, 10), "truncated"},
		{"trailing garbage", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 9), "trailing garbage"},
		{"duplicate name", stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "twice"},
		{"metadata not strings", stFile(`{"__metadata__":{"k":1}}`, 0), "__metadata__"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.safetensors")
			if err := os.WriteFile(path, tc.file, 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := OpenSafetensors(path)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("valid file rejected: %v", err)
				}
				f.Close()
				return
			}
			if err == nil {
				f.Close()
				t.Fatalf("corrupt file accepted, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "re-download or re-export") {
				t.Errorf("error %q does not contain %q and advice", err, tc.want)
			}
		})
	}
}

func TestSafetensorsReadErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "i.safetensors")
	if err := os.WriteFile(path, stFile(`{"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, 8), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := OpenSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Float32("ids"); err == nil || !strings.Contains(err.Error(), "dtype I64") {
		t.Errorf("reading I64 as float: %v", err)
	}
	if _, err := f.Float32("nope"); err == nil || !strings.Contains(err.Error(), `no tensor named "nope"`) {
		t.Errorf("missing tensor: %v", err)
	}
}

// FuzzSafetensorsHeader feeds arbitrary files to the header parser: it must never panic, and
// whatever it accepts must describe tensors that tile the data section exactly.
func FuzzSafetensorsHeader(f *testing.F) {
	f.Add(stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8))
	f.Add(stFile(`{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"v":{"dtype":"F16","shape":[],"data_offsets":[8,10]}}  `, 10))
	f.Add(stFile(`{}`, 0))
	f.Add(stFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8))
	f.Add(stFile(`{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}}`, 1))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{'})
	f.Fuzz(func(t *testing.T, file []byte) {
		sf, err := openSafetensors(bytes.NewReader(file), int64(len(file)))
		if err != nil {
			return
		}
		dataLen := int64(len(file)) - sf.dataStart
		var end int64
		for _, ti := range sf.tensors {
			if ti.Begin != end || ti.End < ti.Begin || ti.End > dataLen {
				t.Fatalf("accepted bad layout %+v (data %d bytes)", ti, dataLen)
			}
			if ti.NumElements()*int64(ti.DType.Size()) != ti.End-ti.Begin {
				t.Fatalf("accepted size mismatch %+v", ti)
			}
			end = ti.End
		}
		if end != dataLen {
			t.Fatalf("accepted %d data bytes for tensors ending at %d", dataLen, end)
		}
	})
}
