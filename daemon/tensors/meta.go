package tensors

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// Columns are the tensor-set schema's columns, in order: every row is
// bytes [offset, offset+len(data)) of tensor name, whose dtype (a PyTorch
// name: float32, float16, bfloat16, float64, int64, int32, int16, int8,
// uint8, bool) and shape ("2,3"; "" for a scalar) every row repeats.
var Columns = []string{"name", "dtype", "shape", "offset", "data"}

var wireNames = map[safetensors.DType]string{
	safetensors.F32: "float32", safetensors.F16: "float16", safetensors.BF16: "bfloat16",
	safetensors.F64: "float64", safetensors.I64: "int64", safetensors.I32: "int32",
	safetensors.I16: "int16", safetensors.I8: "int8", safetensors.U8: "uint8", safetensors.BOOL: "bool",
}

var byWireName = func() map[string]safetensors.DType {
	m := map[string]safetensors.DType{}
	for d, n := range wireNames {
		m[n] = d
	}
	return m
}()

// ParseDType maps a PyTorch dtype name ("bfloat16") or a safetensors one
// ("BF16") to the safetensors dtype. Sub-byte and 8-bit float types are
// refused: the daemon stores them but no client produces them yet.
func ParseDType(s string) (safetensors.DType, error) {
	if d, ok := byWireName[s]; ok {
		return d, nil
	}
	if d, err := safetensors.ParseDType(s); err == nil {
		if _, ok := wireNames[d]; ok {
			return d, nil
		}
	}
	return 0, fmt.Errorf("unsupported dtype %q (float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8, bool)", s)
}

// WireName is d's PyTorch name (its safetensors name for dtypes without one).
func WireName(d safetensors.DType) string {
	if n, ok := wireNames[d]; ok {
		return n
	}
	return d.String()
}

// KernelDType and FromKernel map between safetensors and kernel dtypes
// (defined once, in arrowio/checkpoint).
var (
	KernelDType = checkpoint.KernelDType
	FromKernel  = checkpoint.FromKernel
)

// ParseShape reads "2,3" (or "" for a scalar) into dimensions.
func ParseShape(s string) ([]int64, error) {
	if strings.TrimSpace(s) == "" {
		return []int64{}, nil
	}
	parts := strings.Split(s, ",")
	out := make([]int64, len(parts))
	for i, p := range parts {
		v, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("bad shape %q: dimension %d is not a non-negative integer", s, i)
		}
		out[i] = v
	}
	return out, nil
}

// FormatShape writes dimensions as "2,3" ("" for a scalar).
func FormatShape(shape []int64) string {
	parts := make([]string, len(shape))
	for i, d := range shape {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return strings.Join(parts, ",")
}

// Meta describes one tensor.
type Meta struct {
	Name  string
	DType safetensors.DType
	Shape []int64
}

// Numel is the element count (1 for a scalar); Meta values built by this
// package never overflow it.
func (m Meta) Numel() int64 {
	n := int64(1)
	for _, d := range m.Shape {
		n *= d
	}
	return n
}

// Bytes is the tensor's size in bytes.
func (m Meta) Bytes() int64 { return m.Numel() * int64(m.DType.Size()) }

// checkedBytes is Bytes with an overflow check (limit 2^62).
func (m Meta) checkedBytes() (int64, error) {
	n := uint64(m.DType.Size())
	for _, d := range m.Shape {
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > 1<<62 {
			return 0, fmt.Errorf("shape %v is too large", m.Shape)
		}
		n = lo
	}
	return int64(n), nil
}

// Info converts to a safetensors TensorInfo (without offsets).
func (m Meta) Info() safetensors.TensorInfo {
	return safetensors.TensorInfo{Name: m.Name, DType: m.DType, Shape: append([]int64(nil), m.Shape...)}
}

// IntShape is the shape as []int (for kernels).
func (m Meta) IntShape() []int {
	s := make([]int, len(m.Shape))
	for i, d := range m.Shape {
		s[i] = int(d)
	}
	return s
}
