package bridge

import (
	"fmt"
	"unsafe"
)

// The C Data Interface ABI (arrow/c/abi.h), read directly so that a pair is
// checked before Arrow's importer trusts it. Only primitive tensor formats
// reach the importer: for nested or variable-size formats it would read
// offsets from the buffers' contents.
type rawSchema struct {
	format, name, metadata *byte
	flags, nChildren       int64
}

type rawArray struct {
	length, nullCount, offset, nBuffers, nChildren int64
	buffers                                        unsafe.Pointer
}

// maxCString bounds how far a C string is scanned for its terminator.
const maxCString = 1 << 16

func cString(p *byte) string {
	if p == nil {
		return ""
	}
	var b []byte
	for i := 0; i < maxCString; i++ {
		c := *(*byte)(unsafe.Add(unsafe.Pointer(p), i))
		if c == 0 {
			break
		}
		b = append(b, c)
	}
	return string(b)
}

// precheck refuses a pair that is not a flat float32, float16 or uint16 array.
func precheck(arrayAddr, schemaAddr uintptr) error {
	s := (*rawSchema)(ptr(schemaAddr))
	a := (*rawArray)(ptr(arrayAddr))
	name := cString(s.name)
	format := cString(s.format)
	switch format {
	case "f", "e", "S":
	default:
		return fmt.Errorf("%w: tensor %q: unsupported Arrow format %q (want f: float32, e: float16, S: uint16 with bfloat16 metadata)", ErrTensor, name, format)
	}
	switch {
	case s.nChildren != 0 || a.nChildren != 0:
		return fmt.Errorf("%w: tensor %q: a tensor array has no children", ErrTensor, name)
	case a.nBuffers != 2:
		return fmt.Errorf("%w: tensor %q: %d buffers, a primitive array has 2", ErrTensor, name, a.nBuffers)
	case a.length < 0 || a.offset < 0:
		return fmt.Errorf("%w: tensor %q: negative length %d or offset %d", ErrTensor, name, a.length, a.offset)
	}
	return nil
}

// ptr turns an address received from Python into a pointer.
func ptr(addr uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&addr)) }
