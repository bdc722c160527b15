package tensor

import (
	"math"
	"testing"
	"unsafe"
)

func TestParseDType(t *testing.T) {
	tests := []struct {
		in   string
		want DType
		ok   bool
	}{
		{"float32", F32, true}, {"F32", F32, true}, {"fp16", F16, true}, {"half", F16, true},
		{"bfloat16", BF16, true}, {"BF16", BF16, true}, {"int8", 0, false}, {"", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseDType(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseDType(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestFromBytes(t *testing.T) {
	buf := make([]byte, 17)
	tests := []struct {
		name string
		b    []byte
		d    DType
		n    int
		ok   bool
	}{
		{"f32", buf[:16], F32, 4, true},
		{"bf16", buf[:16], BF16, 8, true},
		{"empty", buf[:0], F16, 0, true},
		{"ragged", buf[:15], F32, 0, false},
		{"misaligned", buf[1:9], F32, 0, false},
		{"bad dtype", buf[:8], DType(9), 0, false},
	}
	for _, tc := range tests {
		v, err := FromBytes(tc.b, tc.d)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if tc.ok && v.Len() != tc.n {
			t.Errorf("%s: %d elements, want %d", tc.name, v.Len(), tc.n)
		}
	}
}

// TestLoadStore round-trips values through every storage type: exact for
// values the type represents, nearest-even rounding otherwise.
func TestLoadStore(t *testing.T) {
	src := make([]float32, 37)
	for j := range src {
		src[j] = float32(j)*0.25 - 3 // exact in every dtype
	}
	for _, d := range []DType{F32, F16, BF16} {
		v := Alloc(len(src)+3, d)
		v.Store(src, 3)
		got := make([]float32, len(src))
		v.Load(got, 3)
		for j := range src {
			if got[j] != src[j] {
				t.Fatalf("%v: entry %d is %v, want %v", d, j, got[j], src[j])
			}
		}
		if view := v.View(3, len(src), make([]float32, len(src))); view[5] != src[5] {
			t.Fatalf("%v: View gives %v, want %v", d, view[5], src[5])
		}
	}
	v := Alloc(1, BF16)
	v.Store([]float32{math.Float32frombits(0x3f818000)}, 0)
	if v.U16[0] != 0x3f82 || BF16Bits(math.Float32frombits(0x3f818000)) != 0x3f82 {
		t.Fatalf("bf16 tie rounds to %#04x, want 0x3f82", v.U16[0])
	}
}

// At and SetAt agree with Load and Store of one element for every dtype,
// rounding included (ties, NaN, overflow).
func TestAtSetAtMatchLoadStore(t *testing.T) {
	xs := []float32{0, 1, -1.5, 3.14159, 1e-40, 65519, 65520, 1e38, 3.4e38, float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000)}
	for _, d := range []DType{F32, BF16, F16} {
		for _, x := range xs {
			a, b := Alloc(3, d), Alloc(3, d)
			a.Store([]float32{x}, 1)
			b.SetAt(1, x)
			var wa, wb [1]float32
			a.Load(wa[:], 1)
			if got := b.At(1); math.Float32bits(got) != math.Float32bits(wa[0]) {
				t.Errorf("%v, %v: At after SetAt = %v, Load after Store = %v", d, x, got, wa[0])
			}
			b.Load(wb[:], 1)
			if math.Float32bits(wb[0]) != math.Float32bits(wa[0]) {
				t.Errorf("%v, %v: SetAt stored %v, Store %v", d, x, wb[0], wa[0])
			}
		}
	}
}

// TestFromBytesAlignedConvert views misaligned bytes through an aligned
// copy and converts between dtypes across several scratch chunks.
func TestFromBytesAlignedConvert(t *testing.T) {
	src := Alloc(40000, F32)
	for i := range src.Len() {
		src.SetAt(i, float32(i%1000)*0.3)
	}
	raw := make([]byte, 4*src.Len()+1)
	mis := raw[1:]
	copy(mis, unsafe.Slice((*byte)(unsafe.Pointer(&src.F32[0])), 4*src.Len()))
	if !Misaligned(mis, F32) || Misaligned(mis, DType(9)) || Misaligned(raw[:0], F32) {
		t.Fatal("Misaligned is wrong")
	}
	v, err := FromBytesAligned(mis, F32)
	if err != nil || Misaligned(unsafe.Slice((*byte)(unsafe.Pointer(&v.F32[0])), 4), F32) {
		t.Fatalf("FromBytesAligned: %v", err)
	}
	dst := Alloc(src.Len(), BF16)
	Convert(dst, v)
	for i := range src.Len() {
		if want := float32FromBF16(BF16Bits(src.At(i))); dst.At(i) != want {
			t.Fatalf("entry %d: %v, want %v", i, dst.At(i), want)
		}
	}
}

func float32FromBF16(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }
