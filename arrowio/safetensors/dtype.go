package safetensors

import (
	"fmt"
	"math"
	"math/bits"
)

// DType is the element type of a tensor, one of the names the safetensors
// format defines. The zero value is invalid.
//
// The constants are declared in the reference implementation's order
// (increasing alignment), which [Save] uses to order tensors.
type DType uint8

// The dtypes of the safetensors format. The Go name drops the underscores of
// the format name (F8E4M3 is "F8_E4M3"); [DType.String] gives the format name.
const (
	BOOL       DType = iota + 1 // "BOOL", 1 byte, 0 or 1
	F4                          // "F4", 4 bits (FP4 E2M1), two per byte
	F6E2M3                      // "F6_E2M3", 6 bits
	F6E3M2                      // "F6_E3M2", 6 bits
	U8                          // "U8"
	I8                          // "I8"
	F8E5M2                      // "F8_E5M2", 1 byte
	F8E4M3                      // "F8_E4M3", 1 byte
	F8E8M0                      // "F8_E8M0", 1 byte
	F8E4M3FNUZ                  // "F8_E4M3FNUZ", 1 byte
	F8E5M2FNUZ                  // "F8_E5M2FNUZ", 1 byte
	I16                         // "I16"
	U16                         // "U16"
	F16                         // "F16", IEEE 754 half precision
	BF16                        // "BF16", bfloat16
	I32                         // "I32"
	U32                         // "U32"
	F32                         // "F32"
	C64                         // "C64", complex of two F32, 8 bytes
	F64                         // "F64"
	I64                         // "I64"
	U64                         // "U64"
	numDTypes
)

var dtypeNames = [numDTypes]string{
	BOOL: "BOOL", F4: "F4", F6E2M3: "F6_E2M3", F6E3M2: "F6_E3M2",
	U8: "U8", I8: "I8", F8E5M2: "F8_E5M2", F8E4M3: "F8_E4M3", F8E8M0: "F8_E8M0",
	F8E4M3FNUZ: "F8_E4M3FNUZ", F8E5M2FNUZ: "F8_E5M2FNUZ",
	I16: "I16", U16: "U16", F16: "F16", BF16: "BF16",
	I32: "I32", U32: "U32", F32: "F32", C64: "C64",
	F64: "F64", I64: "I64", U64: "U64",
}

var dtypeBits = [numDTypes]uint8{
	BOOL: 8, F4: 4, F6E2M3: 6, F6E3M2: 6,
	U8: 8, I8: 8, F8E5M2: 8, F8E4M3: 8, F8E8M0: 8, F8E4M3FNUZ: 8, F8E5M2FNUZ: 8,
	I16: 16, U16: 16, F16: 16, BF16: 16,
	I32: 32, U32: 32, F32: 32, C64: 64,
	F64: 64, I64: 64, U64: 64,
}

var dtypeByName = func() map[string]DType {
	m := make(map[string]DType, numDTypes)
	for d := BOOL; d < numDTypes; d++ {
		m[dtypeNames[d]] = d
	}
	return m
}()

// ParseDType returns the DType whose format name is s ("F32", "BF16",
// "F8_E4M3", ...). Names are case-sensitive, as in the format. An unknown name
// gives an error wrapping [ErrDType]. O(1).
func ParseDType(s string) (DType, error) {
	if d, ok := dtypeByName[s]; ok {
		return d, nil
	}
	return 0, fmt.Errorf("%w %q", ErrDType, s)
}

// Valid reports whether d is one of the declared dtypes.
func (d DType) Valid() bool { return d >= BOOL && d < numDTypes }

// String returns the format name of d ("F32"), or "DType(n)" for an invalid d.
func (d DType) String() string {
	if d.Valid() {
		return dtypeNames[d]
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Bits returns the size of one element in bits (4 for F4, 6 for F6_E2M3 and
// F6_E3M2, 8·Size() otherwise), or 0 for an invalid d.
func (d DType) Bits() int {
	if d.Valid() {
		return int(dtypeBits[d])
	}
	return 0
}

// Size returns the size of one element in bytes (4 for F32, 2 for BF16,
// 8 for C64). It returns 0 for the sub-byte dtypes F4, F6_E2M3 and F6_E3M2,
// whose elements do not fill a byte (use [DType.Bits] and [ByteSize]), and for
// an invalid d.
func (d DType) Size() int {
	if b := d.Bits(); b%8 == 0 {
		return b / 8
	}
	return 0
}

// ByteSize returns the number of bytes a tensor of dtype d and the given
// shape occupies: product(shape)·d.Bits()/8; a scalar (empty shape) holds one
// element. It fails with [ErrDType] for an invalid d, [ErrShape] for a
// negative dimension, and [ErrSizeMismatch] when the size overflows int64 or
// is not a whole number of bytes (sub-byte dtypes). O(len(shape)).
func ByteSize(d DType, shape []int64) (int64, error) {
	n, msg, kind := shapeSize(d, shape)
	if kind != nil {
		return 0, fmt.Errorf("%w: %s", kind, msg)
	}
	return n, nil
}

// shapeSize is ByteSize with the failure split into a sentinel and a
// description naming the dtype and shape.
func shapeSize(d DType, shape []int64) (n int64, msg string, kind error) {
	if !d.Valid() {
		return 0, fmt.Sprintf("invalid dtype %v", d), ErrDType
	}
	dims := make([]uint64, len(shape))
	for i, s := range shape {
		if s < 0 {
			return 0, fmt.Sprintf("shape %s has negative dimension %d", formatShape(shape), i), ErrShape
		}
		dims[i] = uint64(s)
	}
	n, msg = byteSize(d, dims)
	if msg != "" {
		return 0, fmt.Sprintf("dtype %v shape %s %s", d, formatShape(shape), msg), ErrSizeMismatch
	}
	return n, "", nil
}

// byteSize computes product(dims)·bits/8. On failure it returns a
// description ("needs more than 2^63-1 bytes", "is not a whole number of
// bytes") instead of a size.
func byteSize(d DType, dims []uint64) (int64, string) {
	const overflow = "needs more than 2^63-1 bytes"
	// A zero dimension makes the tensor empty whatever the other dimensions.
	for _, s := range dims {
		if s == 0 {
			return 0, ""
		}
	}
	elems := uint64(1)
	for _, s := range dims {
		hi, lo := bits.Mul64(elems, s)
		if hi != 0 {
			return 0, overflow
		}
		elems = lo
	}
	// bits = elems·Bits() as a 128-bit number hi:lo; bytes = bits/8.
	hi, lo := bits.Mul64(elems, uint64(d.Bits()))
	if lo%8 != 0 {
		return 0, fmt.Sprintf("has %d elements of %d bits, not a whole number of bytes", elems, d.Bits())
	}
	if hi>>3 != 0 {
		return 0, overflow
	}
	n := lo>>3 | hi<<61
	if n > math.MaxInt64 {
		return 0, overflow
	}
	return int64(n), ""
}

func formatShape(shape []int64) string {
	b := make([]byte, 0, 2+4*len(shape))
	b = append(b, '[')
	for i, s := range shape {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, "%d", s)
	}
	return string(append(b, ']'))
}
