package checkpoints

import (
	"math"
	"testing"
)

func TestFloat32ToBF16(t *testing.T) {
	tests := []struct {
		name string
		in   uint32 // float32 bits
		want uint16
	}{
		{"zero", 0x00000000, 0x0000},
		{"negative zero", 0x80000000, 0x8000},
		{"one", 0x3f800000, 0x3f80},
		{"minus two", 0xc0000000, 0xc000},
		{"below half rounds down", 0x3f807fff, 0x3f80},
		{"above half rounds up", 0x3f808001, 0x3f81},
		{"tie to even stays", 0x3f808000, 0x3f80},
		{"tie to even goes up", 0x3f818000, 0x3f82},
		{"negative tie to even", 0xbf818000, 0xbf82},
		{"largest bf16 finite", 0x7f7f0000, 0x7f7f},
		{"just below overflow tie", 0x7f7f7fff, 0x7f7f},
		{"overflow tie rounds to inf", 0x7f7f8000, 0x7f80},
		{"max float32 overflows", 0x7f7fffff, 0x7f80},
		{"negative max float32 overflows", 0xff7fffff, 0xff80},
		{"+inf", 0x7f800000, 0x7f80},
		{"-inf", 0xff800000, 0xff80},
		{"quiet NaN", 0x7fc00000, 0x7fc0},
		{"NaN with payload only in low bits stays NaN", 0x7f800001, 0x7fc0},
		{"negative NaN keeps sign", 0xff800001, 0xffc0},
		{"NaN with high payload", 0x7fa00000, 0x7fe0},
		{"smallest f32 subnormal flushes to zero", 0x00000001, 0x0000},
		{"subnormal tie to even zero", 0x00008000, 0x0000},
		{"smallest bf16 subnormal", 0x00010000, 0x0001},
		{"subnormal tie to even up", 0x00018000, 0x0002},
		{"largest subnormal rounds to smallest normal", 0x807fffff, 0x8080},
		{"smallest normal", 0x00800000, 0x0080},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Float32ToBF16(math.Float32frombits(tc.in))
			if got != tc.want {
				t.Errorf("Float32ToBF16(%#08x) = %#04x, want %#04x", tc.in, got, tc.want)
			}
		})
	}
}

// Every bfloat16 widens exactly and narrows back to itself (NaN to a NaN).
func TestBF16RoundTripAllValues(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := BF16ToFloat32(uint16(h))
		if math.Float32bits(f) != uint32(h)<<16 {
			t.Fatalf("BF16ToFloat32(%#04x) bits %#08x", h, math.Float32bits(f))
		}
		back := Float32ToBF16(f)
		if f != f {
			if back&0x7f80 != 0x7f80 || back&0x7f == 0 && back&0x40 == 0 || back&0x8000 != uint16(h)&0x8000 {
				t.Fatalf("NaN %#04x narrowed to non-NaN or lost sign: %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("bf16 %#04x -> %g -> %#04x", h, f, back)
		}
	}
}

// Rounding agrees with a float64 reference nearest-even rounding on a sweep of bit patterns.
func TestBF16MatchesReferenceRounding(t *testing.T) {
	for b := uint32(0); b < 0x7f800000; b += 0x1235 {
		f := math.Float32frombits(b)
		lo := b &^ 0xffff
		hi := lo + 0x10000
		dlo := float64(f) - float64(math.Float32frombits(lo))
		hiVal := float64(math.Float32frombits(hi))
		if hi == 0x7f800000 { // IEEE rounds overflow as if the exponent range continued
			hiVal = math.Ldexp(1, 128)
		}
		dhi := hiVal - float64(f)
		want := uint16(lo >> 16)
		if dhi < dlo || dhi == dlo && (lo>>16)&1 == 1 {
			want = uint16(hi >> 16)
		}
		if got := Float32ToBF16(f); got != want {
			t.Fatalf("Float32ToBF16(%#08x) = %#04x, want %#04x", b, got, want)
		}
	}
}

func TestFloat32ToF16(t *testing.T) {
	tests := []struct {
		name string
		in   float32
		want uint16
	}{
		{"one", 1, 0x3c00},
		{"max finite", 65504, 0x7bff},
		{"below overflow tie", 65519, 0x7bff},
		{"overflow tie rounds to inf", 65520, 0x7c00},
		{"overflow", 1e6, 0x7c00},
		{"negative overflow", -1e6, 0xfc00},
		{"smallest subnormal", float32(math.Ldexp(1, -24)), 0x0001},
		{"half smallest subnormal ties to zero", float32(math.Ldexp(1, -25)), 0x0000},
		{"subnormal tie to even up", float32(math.Ldexp(3, -25)), 0x0002},
		{"largest subnormal", float32(math.Ldexp(1023, -24)), 0x03ff},
		{"tie to even at 1", float32(1 + math.Ldexp(1, -11)), 0x3c00},
		{"tie to even up at 1", float32(1 + math.Ldexp(3, -11)), 0x3c02},
		{"+inf", float32(math.Inf(1)), 0x7c00},
		{"-inf", float32(math.Inf(-1)), 0xfc00},
		{"negative zero", float32(math.Copysign(0, -1)), 0x8000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Float32ToF16(tc.in); got != tc.want {
				t.Errorf("Float32ToF16(%g) = %#04x, want %#04x", tc.in, got, tc.want)
			}
		})
	}
	if h := Float32ToF16(float32(math.NaN())); h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
		t.Errorf("NaN narrowed to %#04x, not a NaN", h)
	}
	for h := 0; h < 1<<16; h++ {
		f := F16ToFloat32(uint16(h))
		if f != f {
			continue
		}
		if back := Float32ToF16(f); back != uint16(h) {
			t.Fatalf("f16 %#04x -> %g -> %#04x", h, f, back)
		}
	}
}

func TestParseDType(t *testing.T) {
	for in, want := range map[string]DType{"f32": F32, "float32": F32, "FP16": F16, "half": F16, "bf16": BF16, "bfloat16": BF16, " BF16 ": BF16} {
		if got, err := ParseDType(in); err != nil || got != want {
			t.Errorf("ParseDType(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "int8", "f8", "float64"} {
		if _, err := ParseDType(in); err == nil {
			t.Errorf("ParseDType(%q) succeeded, want an error", in)
		}
	}
}
