package safetensors

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// TensorInfo describes one tensor of a file: its name, dtype, shape and the
// byte range [Begin, End) of its data, counted from the first byte of the
// data section (the header's data_offsets; add [File.DataOffset] for a file
// offset). A scalar has an empty Shape. NewWriter reads Name, DType and Shape
// and ignores Begin and End.
type TensorInfo struct {
	Name       string
	DType      DType
	Shape      []int64
	Begin, End int64
}

// NumElements returns product(Shape), 1 for a scalar. O(len(Shape)). It does
// not check for overflow; TensorInfos returned by this package never
// overflow.
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

// ByteLen returns End - Begin, the tensor's size in bytes.
func (t TensorInfo) ByteLen() int64 { return t.End - t.Begin }

// Tensor is a tensor's dtype, shape and raw little-endian, row-major bytes
// (len(Data) == ByteSize(DType, Shape)).
type Tensor struct {
	DType DType
	Shape []int64
	Data  []byte
}

// File is an open, validated safetensors file. Its methods are safe for
// concurrent use. The byte slices it hands out alias the file mapping (or the
// buffer given to OpenBytes): they are read-only (writing to a mapped file's
// slice faults) and become invalid at Close.
type File struct {
	path      string
	dataStart int64 // 8 + header length
	hdr       *header

	mu     sync.RWMutex
	buf    []byte // whole file; nil after Close
	unmap  func([]byte) error
	closed bool
}

// Open memory-maps the file at path read-only and validates it completely
// (see the package documentation for the rules) before returning. Cost: one
// mmap plus O(header size + T log T) for T tensors; tensor data is not read
// (pages are faulted in when the slices from Bytes are touched).
//
// The file must not be truncated or rewritten in place while it is open:
// reading a mapped page past a shrunken end raises SIGBUS. Files written by
// this package's Writer are replaced by rename, which is safe.
//
// On platforms other than Linux the file is read into memory instead.
func Open(path string) (*File, error) {
	buf, unmap, err := mapFile(path)
	if err != nil {
		return nil, err
	}
	f, err := newFile(path, buf)
	if err != nil {
		if unmap != nil {
			_ = unmap(buf)
		}
		return nil, err
	}
	f.unmap = unmap
	if unmap != nil {
		register(buf)
	}
	return f, nil
}

// OpenBytes validates b as a complete safetensors file and returns a File
// over it; name stands for the path in error messages. b is not copied: the
// slices from Bytes alias it, so b must not be modified while the File is in
// use. Close only marks the File closed. Cost O(header size + T log T).
func OpenBytes(b []byte, name string) (*File, error) {
	return newFile(name, b)
}

func newFile(path string, buf []byte) (*File, error) {
	size := int64(len(buf))
	if size < 8 {
		return nil, fileErr(path, ErrTruncated, fmt.Sprintf(
			"file holds %d bytes, fewer than the 8-byte header length", size), nil)
	}
	n := binary.LittleEndian.Uint64(buf[:8])
	if n > MaxHeaderSize {
		return nil, fileErr(path, ErrHeaderTooLarge, fmt.Sprintf(
			"header length %d exceeds the %d-byte limit", n, MaxHeaderSize), nil)
	}
	if 8+int64(n) > size {
		return nil, fileErr(path, ErrTruncated, fmt.Sprintf(
			"header length %d runs past the end of the %d-byte file", n, size), nil)
	}
	dataStart := 8 + int64(n)
	hdr, err := parseHeader(path, buf[8:dataStart], size-dataStart)
	if err != nil {
		return nil, err
	}
	return &File{path: path, dataStart: dataStart, hdr: hdr, buf: buf}, nil
}

// Path returns the path given to Open (or the name given to OpenBytes).
func (f *File) Path() string { return f.path }

// DataOffset returns the file offset of the data section, 8 + header length.
// Files from this package's writer (and the reference writer) have
// DataOffset() % 8 == 0.
func (f *File) DataOffset() int64 { return f.dataStart }

// Len returns the number of tensors.
func (f *File) Len() int { return len(f.hdr.names) }

// Names returns the tensor names sorted byte-wise (the order of the
// header is not meaningful). The slice is a fresh copy. O(T).
func (f *File) Names() []string { return slices.Clone(f.hdr.names) }

// Info returns the description of the named tensor, with a Shape the caller
// may modify, and whether it exists. It keeps working after Close. O(rank).
func (f *File) Info(name string) (TensorInfo, bool) {
	t, ok := f.hdr.tensors[name]
	if !ok {
		return TensorInfo{}, false
	}
	c := *t
	c.Shape = slices.Clone(t.Shape)
	return c, true
}

// Metadata returns a copy of the header's "__metadata__" map, or nil when the
// header has none (or has null). It keeps working after Close. O(entries).
func (f *File) Metadata() map[string]string { return maps.Clone(f.hdr.metadata) }

// Bytes returns the named tensor's data: a zero-copy slice of the mapping (or
// of the OpenBytes buffer) of length ByteSize(dtype, shape), with capacity
// equal to its length so an append cannot touch a neighbour. The slice is
// read-only and invalid after Close. O(1). Errors: ErrNotFound, ErrClosed.
func (f *File) Bytes(name string) ([]byte, error) {
	t, ok := f.hdr.tensors[name]
	if !ok {
		return nil, tensorErr(f.path, name, ErrNotFound, "not in the file", nil)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, tensorErr(f.path, name, ErrClosed, "file is closed", nil)
	}
	s, e := f.dataStart+t.Begin, f.dataStart+t.End
	return f.buf[s:e:e], nil
}

// Tensor returns the named tensor with Data = Bytes(name) (zero-copy, same
// aliasing and lifetime) and a Shape the caller may modify. O(rank).
func (f *File) Tensor(name string) (Tensor, error) {
	b, err := f.Bytes(name)
	if err != nil {
		return Tensor{}, err
	}
	t := f.hdr.tensors[name]
	return Tensor{DType: t.DType, Shape: slices.Clone(t.Shape), Data: b}, nil
}

// Close unmaps the file. Slices obtained from Bytes or Tensor must not be used
// afterwards (reading them faults). Bytes and Tensor then fail with ErrClosed,
// a second Close returns an error wrapping ErrClosed.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fileErr(f.path, ErrClosed, "file already closed", nil)
	}
	f.closed = true
	buf := f.buf
	f.buf = nil
	if f.unmap != nil {
		unregister(buf)
		if err := f.unmap(buf); err != nil {
			return fileErr(f.path, ErrIO, "munmap", err)
		}
	}
	return nil
}
