package bridge

import (
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/cdata"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// DTypeKey is the field-metadata key that names a tensor's dtype when the
// Arrow type alone does not (bfloat16 travels as uint16).
const DTypeKey = "npsfuse.dtype"

// ErrTensor marks a tensor that cannot be imported.
var ErrTensor = fault.New(fault.InvalidTensor, "bad tensor")

// ShapeKey and TransposedKey are field-metadata keys: the tensor's shape as
// comma-separated dimensions ("768,3072"; "" for a scalar), and "1" for a
// weight stored (in, out) rather than PyTorch's (out, in).
const (
	ShapeKey      = "npsfuse.shape"
	TransposedKey = "npsfuse.transposed"
)

// Tensor is one imported tensor: its name, shape (nil when not sent) and a
// view of its memory.
type Tensor struct {
	Name       string
	Shape      []int
	Transposed bool
	Vec        tensor.Vec
}

// Batch is a set of imported tensors. Their memory belongs to the producer
// (Python) and stays valid until Release.
type Batch struct {
	Tensors []Tensor
	arrays  []arrow.Array
}

// Release hands every array back to its producer; the views die with it.
func (b *Batch) Release() {
	for _, a := range b.arrays {
		a.Release()
	}
	b.arrays, b.Tensors = nil, nil
}

var (
	arraySize  = unsafe.Sizeof(cdata.CArrowArray{})
	schemaSize = unsafe.Sizeof(cdata.CArrowSchema{})
)

// ImportAt imports n tensors from two C arrays laid out back to back in
// memory: n ArrowArray structs starting at address arrays and n ArrowSchema
// structs starting at address schemas (as Python's cffi allocates with
// ffi.new("struct ArrowArray[]", n)). Ownership of all n pairs passes to Go:
// on success they are released by Batch.Release, on error before ImportAt
// returns. Errors wrap ErrTensor and name the tensor.
func ImportAt(arrays, schemas uintptr, n int) (_ *Batch, err error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: negative tensor count %d", ErrTensor, n)
	}
	if n > 0 && (arrays == 0 || schemas == 0) {
		return nil, fmt.Errorf("%w: null ArrowArray or ArrowSchema address", ErrTensor)
	}
	b := &Batch{Tensors: make([]Tensor, 0, n)}
	i := 0
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: tensor %d: malformed Arrow C data: %v", ErrTensor, i, r)
		}
		if err != nil {
			b.Release()
			for j := i; j < n; j++ { // hand back what was not imported (release is idempotent)
				releaseRaw(arrays, schemas, j)
			}
		}
	}()
	for ; i < n; i++ {
		aAddr, sAddr := arrays+uintptr(i)*arraySize, schemas+uintptr(i)*schemaSize
		if err := precheck(aAddr, sAddr); err != nil {
			return nil, err
		}
		ca, cs := cdata.ArrayFromPtr(aAddr), cdata.SchemaFromPtr(sAddr)
		f, a, ierr := cdata.ImportCArray(ca, cs)
		if ierr != nil {
			return nil, fmt.Errorf("%w: tensor %d (%q): %v", ErrTensor, i, f.Name, ierr)
		}
		b.arrays = append(b.arrays, a)
		v, verr := FromArrow(f, a)
		if verr != nil {
			i++ // already owned by b.arrays
			return nil, verr
		}
		shape, serr := shapeOf(f, v.Len())
		if serr != nil {
			i++
			return nil, serr
		}
		tr := false
		if k := f.Metadata.FindKey(TransposedKey); k >= 0 {
			tr = f.Metadata.Values()[k] == "1"
		}
		b.Tensors = append(b.Tensors, Tensor{Name: f.Name, Shape: shape, Transposed: tr, Vec: v})
	}
	return b, nil
}

// releaseRaw releases pair j if its producer's release callback is still set.
func releaseRaw(arrays, schemas uintptr, j int) {
	cdata.ReleaseCArrowArray(cdata.ArrayFromPtr(arrays + uintptr(j)*arraySize))
	cdata.ReleaseCArrowSchema(cdata.SchemaFromPtr(schemas + uintptr(j)*schemaSize))
}

// FromArrow views a primitive Arrow array as a tensor. It accepts float32,
// float16, and uint16 carrying DTypeKey metadata ("bfloat16" or "float16");
// it refuses other types, nulls and misaligned data, naming the field.
func FromArrow(f arrow.Field, a arrow.Array) (tensor.Vec, error) {
	name := f.Name
	dt, err := dtypeOf(f, a.DataType())
	if err != nil {
		return tensor.Vec{}, fmt.Errorf("%w: tensor %q: %v", ErrTensor, name, err)
	}
	if a.NullN() != 0 {
		return tensor.Vec{}, fmt.Errorf("%w: tensor %q has %d null entries; tensors cannot hold nulls", ErrTensor, name, a.NullN())
	}
	d := a.Data()
	n, off := d.Len(), d.Offset()
	bufs := d.Buffers()
	if len(bufs) < 2 || (bufs[1] == nil && n > 0) {
		return tensor.Vec{}, fmt.Errorf("%w: tensor %q has no data buffer", ErrTensor, name)
	}
	if n == 0 {
		return tensor.Alloc(0, dt), nil
	}
	sz := dt.Size()
	raw := bufs[1].Bytes()
	lo, hi := off*sz, (off+n)*sz
	if off < 0 || hi > len(raw) || hi < lo {
		return tensor.Vec{}, fmt.Errorf("%w: tensor %q: data buffer of %d bytes cannot hold %d elements at offset %d", ErrTensor, name, len(raw), n, off)
	}
	v, err := tensor.FromBytes(raw[lo:hi], dt)
	if err != nil {
		return tensor.Vec{}, fmt.Errorf("%w: tensor %q: %v", ErrTensor, name, err)
	}
	return v, nil
}

// shapeOf parses the ShapeKey metadata and checks it against n elements.
func shapeOf(f arrow.Field, n int) ([]int, error) {
	k := f.Metadata.FindKey(ShapeKey)
	if k < 0 {
		return nil, nil
	}
	s := f.Metadata.Values()[k]
	shape := []int{}
	prod := 1
	if s != "" {
		for _, part := range strings.Split(s, ",") {
			d, err := strconv.Atoi(part)
			if err != nil || d < 0 {
				return nil, fmt.Errorf("%w: tensor %q: bad %s %q", ErrTensor, f.Name, ShapeKey, s)
			}
			shape = append(shape, d)
			prod *= d
		}
	}
	if prod != n {
		return nil, fmt.Errorf("%w: tensor %q: shape [%s] holds %d elements, array has %d", ErrTensor, f.Name, s, prod, n)
	}
	return shape, nil
}

func dtypeOf(f arrow.Field, t arrow.DataType) (tensor.DType, error) {
	meta := ""
	if i := f.Metadata.FindKey(DTypeKey); i >= 0 {
		meta = f.Metadata.Values()[i]
	}
	switch t.ID() {
	case arrow.FLOAT32:
		if meta != "" && meta != "float32" {
			return 0, fmt.Errorf("arrow type float32 contradicts %s=%q", DTypeKey, meta)
		}
		return tensor.F32, nil
	case arrow.FLOAT16:
		if meta != "" && meta != "float16" {
			return 0, fmt.Errorf("arrow type float16 contradicts %s=%q", DTypeKey, meta)
		}
		return tensor.F16, nil
	case arrow.UINT16:
		switch meta {
		case "bfloat16":
			return tensor.BF16, nil
		case "float16":
			return tensor.F16, nil
		case "":
			return 0, fmt.Errorf("uint16 data needs field metadata %s (bfloat16 or float16)", DTypeKey)
		}
		return 0, fmt.Errorf("unsupported %s %q on uint16 data (want bfloat16 or float16)", DTypeKey, meta)
	}
	return 0, fmt.Errorf("unsupported Arrow type %s (want float32, float16, or uint16 bfloat16)", t)
}

// Export-side helpers live in Python: Go never allocates tensors that
// Python keeps, it writes into buffers Python allocated.
