package tensor

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/vec"
	"github.com/x448/float16"
)

// DType is the storage type of a tensor's elements.
type DType uint8

// The storage types kernels accept. Arithmetic is always float32.
const (
	F32 DType = iota + 1
	F16
	BF16
)

// String returns the PyTorch-style name of the dtype ("float32", ...).
func (d DType) String() string {
	switch d {
	case F32:
		return "float32"
	case F16:
		return "float16"
	case BF16:
		return "bfloat16"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size is the number of bytes one element occupies.
func (d DType) Size() int {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	}
	return 0
}

// ParseDType maps a name to a DType. It accepts the PyTorch names
// ("float32", "float16", "bfloat16"), their short forms ("fp32", "fp16",
// "bf16") and the safetensors names ("F32", "F16", "BF16").
func ParseDType(s string) (DType, error) {
	switch s {
	case "float32", "fp32", "F32", "float":
		return F32, nil
	case "float16", "fp16", "F16", "half":
		return F16, nil
	case "bfloat16", "bf16", "BF16":
		return BF16, nil
	}
	return 0, fmt.Errorf("unknown dtype %q (want float32, float16 or bfloat16)", s)
}

// Vec is a flat view of n elements of one dtype. Exactly one of F32 and U16 is
// set: F32 for float32 storage, U16 for float16 and bfloat16 bit patterns.
// A Vec aliases its memory; copying a Vec copies the view, not the data.
type Vec struct {
	DType DType
	F32   []float32
	U16   []uint16
}

// FromF32 views a float32 slice.
func FromF32(x []float32) Vec { return Vec{DType: F32, F32: x} }

// FromBytes views raw little-endian bytes as n elements of dtype d. The byte
// slice must be aligned for the element type (Go, numpy, torch and mmap'd
// safetensors data all are) and hold exactly n·d.Size() bytes.
func FromBytes(b []byte, d DType) (Vec, error) {
	sz := d.Size()
	if sz == 0 {
		return Vec{}, fmt.Errorf("tensor: unsupported dtype %v", d)
	}
	if len(b)%sz != 0 {
		return Vec{}, fmt.Errorf("tensor: %d bytes is not a whole number of %v elements", len(b), d)
	}
	n := len(b) / sz
	if n == 0 {
		if d == F32 {
			return Vec{DType: d, F32: []float32{}}, nil
		}
		return Vec{DType: d, U16: []uint16{}}, nil
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	if uintptr(p)%uintptr(sz) != 0 {
		return Vec{}, fmt.Errorf("tensor: %v data at %p is not %d-byte aligned", d, p, sz)
	}
	if d == F32 {
		return Vec{DType: d, F32: unsafe.Slice((*float32)(p), n)}, nil
	}
	return Vec{DType: d, U16: unsafe.Slice((*uint16)(p), n)}, nil
}

// Misaligned reports whether b's data is not aligned for d's elements,
// which FromBytes refuses.
func Misaligned(b []byte, d DType) bool {
	return len(b) > 0 && d.Size() > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%uintptr(d.Size()) != 0
}

// FromBytesAligned is FromBytes for data a foreign writer may have left
// misaligned: such data is copied once into aligned memory first.
func FromBytesAligned(b []byte, d DType) (Vec, error) {
	if Misaligned(b, d) {
		aligned := make([]byte, len(b)+8)
		off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(aligned))) % uintptr(d.Size()))
		b = append(aligned[off:off], b...)
	}
	return FromBytes(b, d)
}

// Convert writes src into dst (of the same length), rounding to dst's
// dtype (nearest even), one chunk at a time.
func Convert(dst, src Vec) {
	scratch := make([]float32, min(1<<14, src.Len()))
	for off := 0; off < src.Len(); off += len(scratch) {
		s := scratch[:min(len(scratch), src.Len()-off)]
		src.Load(s, off)
		dst.Store(s, off)
	}
}

// Alloc returns a Vec of n zero elements of dtype d backed by Go memory.
func Alloc(n int, d DType) Vec {
	if d == F32 {
		return Vec{DType: d, F32: make([]float32, n)}
	}
	return Vec{DType: d, U16: make([]uint16, n)}
}

// Len is the number of elements.
func (v Vec) Len() int {
	if v.DType == F32 {
		return len(v.F32)
	}
	return len(v.U16)
}

// Slice returns the view of elements [lo, hi).
func (v Vec) Slice(lo, hi int) Vec {
	if v.DType == F32 {
		return Vec{DType: v.DType, F32: v.F32[lo:hi]}
	}
	return Vec{DType: v.DType, U16: v.U16[lo:hi]}
}

// Load widens elements [off, off+len(dst)) into dst. For float32 storage
// prefer View, which avoids the copy.
func (v Vec) Load(dst []float32, off int) {
	switch v.DType {
	case F32:
		copy(dst, v.F32[off:off+len(dst)])
	case BF16:
		vec.WidenBF16(dst, v.U16[off:off+len(dst)])
	case F16:
		src := v.U16[off : off+len(dst)]
		for i, b := range src {
			dst[i] = float16.Frombits(b).Float32()
		}
	}
}

// View returns elements [off, off+n) as float32 without copying when the
// storage is float32, and otherwise widens them into scratch (len ≥ n).
func (v Vec) View(off, n int, scratch []float32) []float32 {
	if v.DType == F32 {
		return v.F32[off : off+n]
	}
	s := scratch[:n]
	v.Load(s, off)
	return s
}

// Store rounds src to the storage type (nearest-even) and writes it to
// elements [off, off+len(src)).
func (v Vec) Store(src []float32, off int) {
	switch v.DType {
	case F32:
		copy(v.F32[off:off+len(src)], src)
	case BF16:
		vec.NarrowBF16(v.U16[off:off+len(src)], src)
	case F16:
		dst := v.U16[off : off+len(src)]
		for i, x := range src {
			dst[i] = uint16(float16.Fromfloat32(x))
		}
	}
}

// At returns element i as float32: Load of one element, without its
// per-call cost (for scattered reads such as a strided sample).
func (v Vec) At(i int) float32 {
	switch v.DType {
	case BF16:
		return math.Float32frombits(uint32(v.U16[i]) << 16)
	case F16:
		return float16.Frombits(v.U16[i]).Float32()
	}
	return v.F32[i]
}

// SetAt rounds x to the storage type as Store does and writes it to
// element i (for scattered writes).
func (v Vec) SetAt(i int, x float32) {
	switch v.DType {
	case BF16:
		v.U16[i] = vec.BF16Bits(x)
	case F16:
		v.U16[i] = uint16(float16.Fromfloat32(x))
	default:
		v.F32[i] = x
	}
}

// BF16Bits rounds x to bfloat16 (round to nearest, ties to even) and returns
// its bit pattern. NaN stays NaN (quiet). It is vec.BF16Bits, the rounding
// Store uses.
func BF16Bits(x float32) uint16 { return vec.BF16Bits(x) }

// HasNonFinite reports the index of the first NaN or ±Inf element, or -1.
func (v Vec) HasNonFinite() int {
	switch v.DType {
	case F32:
		for i, x := range v.F32 {
			if math.Float32bits(x)&0x7f800000 == 0x7f800000 {
				return i
			}
		}
	case BF16:
		for i, b := range v.U16 {
			if b&0x7f80 == 0x7f80 {
				return i
			}
		}
	case F16:
		for i, b := range v.U16 {
			if b&0x7c00 == 0x7c00 {
				return i
			}
		}
	}
	return -1
}
