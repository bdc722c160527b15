package safetensors

import (
	"errors"
	"testing"
)

func TestDTypeTable(t *testing.T) {
	// Sizes from the format description: bits per element.
	cases := []struct {
		name string
		d    DType
		bits int
		size int
	}{
		{"BOOL", BOOL, 8, 1}, {"F4", F4, 4, 0}, {"F6_E2M3", F6E2M3, 6, 0}, {"F6_E3M2", F6E3M2, 6, 0},
		{"U8", U8, 8, 1}, {"I8", I8, 8, 1}, {"F8_E5M2", F8E5M2, 8, 1}, {"F8_E4M3", F8E4M3, 8, 1},
		{"F8_E8M0", F8E8M0, 8, 1}, {"F8_E4M3FNUZ", F8E4M3FNUZ, 8, 1}, {"F8_E5M2FNUZ", F8E5M2FNUZ, 8, 1},
		{"I16", I16, 16, 2}, {"U16", U16, 16, 2}, {"F16", F16, 16, 2}, {"BF16", BF16, 16, 2},
		{"I32", I32, 32, 4}, {"U32", U32, 32, 4}, {"F32", F32, 32, 4}, {"C64", C64, 64, 8},
		{"F64", F64, 64, 8}, {"I64", I64, 64, 8}, {"U64", U64, 64, 8},
	}
	if len(cases) != int(numDTypes)-1 {
		t.Fatalf("table has %d dtypes, package %d", len(cases), numDTypes-1)
	}
	for _, c := range cases {
		d, err := ParseDType(c.name)
		if err != nil || d != c.d {
			t.Errorf("ParseDType(%q) = %v, %v; want %v", c.name, d, err, c.d)
		}
		if d.String() != c.name || d.Bits() != c.bits || d.Size() != c.size || !d.Valid() {
			t.Errorf("%s: String %q Bits %d Size %d Valid %v; want %q %d %d true",
				c.name, d.String(), d.Bits(), d.Size(), d.Valid(), c.name, c.bits, c.size)
		}
	}
	for _, bad := range []string{"", "f32", "F33", "float32", "F8_E4M3FN", "I4", " F32"} {
		if d, err := ParseDType(bad); !errors.Is(err, ErrDType) || d.Valid() {
			t.Errorf("ParseDType(%q) = %v, %v; want ErrDType", bad, d, err)
		}
	}
	var zero DType
	if zero.Valid() || zero.Size() != 0 || zero.Bits() != 0 || zero.String() != "DType(0)" {
		t.Errorf("zero DType: Valid %v Size %d Bits %d String %q", zero.Valid(), zero.Size(), zero.Bits(), zero.String())
	}
}

func TestByteSize(t *testing.T) {
	cases := []struct {
		name  string
		d     DType
		shape []int64
		want  int64
		kind  error
	}{
		{"scalar F32", F32, nil, 4, nil},
		{"matrix F32", F32, []int64{2, 3}, 24, nil},
		{"BF16 vector", BF16, []int64{5}, 10, nil},
		{"C64", C64, []int64{3}, 24, nil},
		{"zero dim", F64, []int64{4, 0, 1 << 62}, 0, nil},
		{"F4 even", F4, []int64{3, 2}, 3, nil},
		{"F4 odd", F4, []int64{3}, 0, ErrSizeMismatch},
		{"F6 four", F6E2M3, []int64{4}, 3, nil},
		{"F6 two", F6E3M2, []int64{2}, 0, ErrSizeMismatch},
		{"largest U8", U8, []int64{1<<63 - 1}, 1<<63 - 1, nil},
		{"bytes overflow", U16, []int64{1 << 62, 2}, 0, ErrSizeMismatch},
		{"elements overflow", U8, []int64{1 << 32, 1 << 32}, 0, ErrSizeMismatch},
		{"F4 near limit", F4, []int64{1 << 61, 4}, 1 << 62, nil},
		{"F4 past limit", F4, []int64{1 << 62, 4}, 0, ErrSizeMismatch},
		{"negative", F32, []int64{2, -1}, 0, ErrShape},
		{"bad dtype", DType(0), []int64{1}, 0, ErrDType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ByteSize(c.d, c.shape)
			if c.kind != nil {
				if !errors.Is(err, c.kind) {
					t.Fatalf("ByteSize = %d, %v; want %v", got, err, c.kind)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("ByteSize = %d, %v; want %d", got, err, c.want)
			}
		})
	}
}
