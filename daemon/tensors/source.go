package tensors

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// Source is a read-only set of named tensors whose bytes are views of a
// memory mapping (zero-copy). Byte slices die with Close.
type Source interface {
	// Path is what was opened.
	Path() string
	// Names lists the tensors in the source's order.
	Names() []string
	// Meta describes the named tensor.
	Meta(name string) (Meta, bool)
	// Bytes is the named tensor's data.
	Bytes(name string) ([]byte, error)
	// Advise passes madvise advice (checkpoint.WillNeed / DontNeed) for a
	// tensor's pages; it is a hint and never fails.
	Advise(name string, advice int)
	// Close unmaps the source.
	Close() error
}

// IsIPCPath reports whether path names an Arrow IPC tensor file (by its
// extension: .arrow, .arrows, .ipc or .feather).
func IsIPCPath(path string) bool {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".arrow", ".arrows", ".ipc", ".feather":
		return true
	}
	return false
}

// Open opens a tensor source: an Arrow IPC tensor file (IsIPCPath), or a
// Hugging Face checkpoint (a folder of safetensors shards or one
// .safetensors file). Both are memory-mapped and validated up front.
func Open(path string) (Source, error) {
	if IsIPCPath(path) {
		return OpenIPC(path)
	}
	c, err := checkpoint.Open(path)
	if err != nil {
		return nil, err
	}
	return &ckptSource{c}, nil
}

// ckptSource serves a checkpoint's tensors (Source methods delegate to
// arrowio/checkpoint).
type ckptSource struct{ c *checkpoint.Checkpoint }

// Path is the checkpoint's path.
func (s *ckptSource) Path() string { return s.c.Path }

// Names lists the tensors (sorted by name).
func (s *ckptSource) Names() []string { return s.c.Names() }

// Meta describes a tensor.
func (s *ckptSource) Meta(name string) (Meta, bool) {
	i, ok := s.c.Info(name)
	if !ok {
		return Meta{}, false
	}
	return Meta{Name: i.Name, DType: i.DType, Shape: i.Shape}, true
}

// Bytes is a tensor's data, a view of the mapping.
func (s *ckptSource) Bytes(name string) ([]byte, error) { return s.c.Bytes(name) }

// Advise passes madvise advice for a tensor's pages.
func (s *ckptSource) Advise(name string, advice int) { s.c.Advise(name, advice) }

// Close unmaps the checkpoint.
func (s *ckptSource) Close() error { return s.c.Close() }

// IPCSource is an Arrow IPC tensor file, memory-mapped.
type IPCSource struct {
	path   string
	mapped []byte
	unmap  bool // mapped is a mapping to release at Close
	names  []string
	metas  map[string]Meta
	data   map[string][]byte
	// Copied counts bytes of tensors split over several rows, which had to
	// be copied together (0 for files written one row per tensor).
	Copied int64
}

// OpenIPC maps and validates an Arrow IPC tensor file (ParseIPC, Assemble).
func OpenIPC(path string) (*IPCSource, error) {
	m, err := mapFile(path)
	if err != nil {
		return nil, err
	}
	s, err := NewIPCSource(path, m)
	if err != nil {
		_ = syscall.Munmap(m)
		return nil, err
	}
	s.unmap = true
	return s, nil
}

// NewIPCSource parses an IPC tensor file already in memory (b is kept and
// aliased by Bytes).
func NewIPCSource(path string, b []byte) (*IPCSource, error) {
	rows, err := ParseIPC(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	metas, data, copied, err := Assemble(rows)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s := &IPCSource{path: path, mapped: b, metas: map[string]Meta{}, data: map[string][]byte{}, Copied: copied}
	for i, m := range metas {
		s.names = append(s.names, m.Name)
		s.metas[m.Name] = m
		s.data[m.Name] = data[i]
	}
	return s, nil
}

// Path is the file's path.
func (s *IPCSource) Path() string { return s.path }

// Names lists the tensors in file order.
func (s *IPCSource) Names() []string { return append([]string(nil), s.names...) }

// Meta describes the named tensor.
func (s *IPCSource) Meta(name string) (Meta, bool) {
	m, ok := s.metas[name]
	return m, ok
}

// Bytes is the named tensor's data (a view of the mapping).
func (s *IPCSource) Bytes(name string) ([]byte, error) {
	d, ok := s.data[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no tensor %q", ErrIPC, s.path, name)
	}
	return d, nil
}

// Advise is a no-op for IPC files (they usually live in shared memory).
func (s *IPCSource) Advise(string, int) {}

// Close unmaps the file.
func (s *IPCSource) Close() error {
	if s.mapped == nil {
		return nil
	}
	m := s.mapped
	s.mapped, s.data = nil, nil
	if !s.unmap {
		return nil
	}
	return syscall.Munmap(m)
}

// mapFile maps a whole file read-only (an empty file gives an error: no
// valid tensor file is empty). The open does not block: a FIFO or device
// named like a tensor file is refused instead of stalling the worker.
func mapFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is %s, not a regular file", ErrIPC, path, safetensors.FileKind(st.Mode()))
	}
	if st.Size() == 0 {
		return nil, fmt.Errorf("%w: %s is empty", ErrIPC, path)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	return m, nil
}

// CloseAll closes every source, joining errors.
func CloseAll(srcs ...Source) error {
	var errs []error
	for _, s := range srcs {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}

// EachChunk calls fn for consecutive pieces of at most chunk bytes of
// every tensor of src, in order (a zero-byte tensor gives one empty
// piece). Pieces alias src.
func EachChunk(src Source, names []string, chunk int64, fn func(m Meta, offset int64, data []byte) error) error {
	if chunk <= 0 {
		return fmt.Errorf("chunk size must be positive")
	}
	for _, name := range names {
		m, ok := src.Meta(name)
		if !ok {
			return fmt.Errorf("%s has no tensor %q", src.Path(), name)
		}
		b, err := src.Bytes(name)
		if err != nil {
			return err
		}
		if len(b) == 0 {
			if err := fn(m, 0, b); err != nil {
				return err
			}
			continue
		}
		for off := int64(0); off < int64(len(b)); off += chunk {
			end := min(off+chunk, int64(len(b)))
			if err := fn(m, off, b[off:end]); err != nil {
				return err
			}
		}
	}
	return nil
}
