package safetensors

import (
	"errors"
	"io/fs"
	"strconv"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// Sentinel errors. Every error this package returns for a malformed file, a
// bad argument or a misuse wraps exactly one of them; test with errors.Is.
var (
	// ErrTruncated: the file is shorter than the 8-byte length prefix, or
	// than 8 plus the header length it declares.
	ErrTruncated = fault.New(fault.InvalidInput, "safetensors: truncated file")
	// ErrHeaderTooLarge: the declared header length exceeds MaxHeaderSize.
	ErrHeaderTooLarge = fault.New(fault.InvalidInput, "safetensors: header too large")
	// ErrBadHeader: the header is not UTF-8, not JSON, not one object, or a
	// field is missing or has the wrong JSON type.
	ErrBadHeader = fault.New(fault.InvalidInput, "safetensors: malformed header")
	// ErrDType: a dtype name is not one the format defines.
	ErrDType = fault.New(fault.InvalidInput, "safetensors: unknown dtype")
	// ErrShape: a shape dimension is negative or does not fit in int64.
	ErrShape = fault.New(fault.InvalidInput, "safetensors: invalid shape")
	// ErrOffsets: data_offsets out of range or reversed, or tensors that
	// overlap, leave a hole, or do not reach the end of the data section.
	ErrOffsets = fault.New(fault.InvalidInput, "safetensors: invalid data offsets")
	// ErrSizeMismatch: a byte length differs from dtype size × element count
	// (or that product overflows, or is not a whole number of bytes).
	ErrSizeMismatch = fault.New(fault.InvalidInput, "safetensors: byte length does not match dtype and shape")
	// ErrDuplicate: a tensor name occurs twice (in a header, in the list
	// given to NewWriter, or a tensor is written twice).
	ErrDuplicate = fault.New(fault.InvalidInput, "safetensors: duplicate tensor")
	// ErrNotFound: no tensor has the given name.
	ErrNotFound = fault.New(fault.InvalidInput, "safetensors: no such tensor")
	// ErrIncomplete: Writer.Close found a tensor whose bytes were not all
	// written.
	ErrIncomplete = fault.New(fault.InvalidInput, "safetensors: tensor not fully written")
	// ErrIO: a read, write, fsync or rename failed; the cause is wrapped too.
	ErrIO = fault.New(fault.Internal, "safetensors: I/O error")
	// ErrClosed: the File or Writer was already closed (or aborted).
	ErrClosed = fault.New(fault.Internal, "safetensors: use of closed file")
)

// Error is the error type of this package. Its message reads
//
//	safetensors: <Path>: tensor "<Tensor>": <Msg>[: <cause>]
//
// (the tensor part only when a tensor is involved). errors.Is(err, Kind) and
// errors.Is/As on the cause work through Unwrap.
type Error struct {
	Path   string // file path, or the name given to OpenBytes
	Tensor string // tensor name; meaningful only when HasTensor
	// HasTensor reports whether the error concerns one tensor (the empty
	// string is a legal tensor name, so Tensor alone cannot tell).
	HasTensor bool
	Kind      error  // one of the Err* sentinels
	Msg       string // what is wrong, without path or tensor name
	Err       error  // underlying cause (JSON or I/O error), may be nil
}

// Error formats the message described on the type.
func (e *Error) Error() string {
	s := "safetensors: " + e.Path + ": "
	if e.HasTensor {
		s += "tensor " + strconv.Quote(e.Tensor) + ": "
	}
	s += e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns Kind and, when present, the underlying cause.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

func fileErr(path string, kind error, msg string, cause error) *Error {
	return &Error{Path: path, Kind: kind, Msg: msg, Err: cause}
}

func tensorErr(path, tensor string, kind error, msg string, cause error) *Error {
	return &Error{Path: path, Tensor: tensor, HasTensor: true, Kind: kind, Msg: msg, Err: cause}
}

// ioErr wraps an I/O error as an *Error of kind ErrIO, dropping the path an
// *fs.PathError repeats.
func ioErr(path string, err error) *Error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fileErr(path, ErrIO, pe.Op, pe.Err)
	}
	return fileErr(path, ErrIO, "I/O", err)
}
