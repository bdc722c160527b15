package tensors

import (
	"fmt"
	"os"
	"path/filepath"
)

// UploadWriter streams an uploaded tensor set, piece by piece, into an
// Arrow IPC tensor file laid out as WriteIPC lays one out (one row per
// tensor, bytes 64-byte aligned): the manifest (every tensor's name,
// dtype and shape) comes first, so the file is planned and its metadata
// written before any byte arrives; pieces of a tensor must then arrive in
// order and are written straight into place. Close checks completeness,
// fsyncs and renames the file into place.
type UploadWriter struct {
	path, tmp string
	f         *os.File
	l         *IPCLayout
	index     map[string]int
	next      []int64
	total     int64
	done      bool
}

// NewUploadWriter lays out path for the manifest metas (names unique and
// non-empty, shapes valid) in a temporary file beside it (mode 0600).
func NewUploadWriter(path string, metas []Meta) (*UploadWriter, error) {
	l, err := PlanIPC(metas)
	if err != nil {
		return nil, err
	}
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, err
	}
	u := &UploadWriter{path: path, tmp: f.Name(), f: f, l: l, index: map[string]int{}, next: make([]int64, len(metas))}
	for i, m := range metas {
		u.index[m.Name] = i
	}
	err = f.Chmod(0o600)
	if err == nil {
		err = f.Truncate(l.Size)
	}
	if err == nil {
		err = l.segments(func(off int64, b []byte) error {
			_, err := f.WriteAt(b, off)
			return err
		})
	}
	if err != nil {
		u.Abort()
		return nil, fmt.Errorf("laying out %s: %w", path, err)
	}
	return u, nil
}

// Put writes one piece. Its name must be in the manifest with the same
// dtype and shape, it must start where the tensor's previous piece ended
// and stay inside the tensor.
func (u *UploadWriter) Put(c Chunk) error {
	i, ok := u.index[c.Name]
	if !ok {
		return fmt.Errorf("%w: tensor %q is not in the upload's manifest", ErrIPC, c.Name)
	}
	m := u.l.metas[i]
	if dt, err := ParseDType(c.DType); err != nil || dt != m.DType || c.Shape != FormatShape(m.Shape) {
		return fmt.Errorf("%w: tensor %q: piece says %s [%s], the manifest %s [%s]", ErrIPC, c.Name, c.DType, c.Shape, WireName(m.DType), FormatShape(m.Shape))
	}
	if c.Offset != u.next[i] {
		return fmt.Errorf("%w: tensor %q: piece at byte %d, expected %d (pieces must arrive in order)", ErrIPC, c.Name, c.Offset, u.next[i])
	}
	if int64(len(c.Data)) > m.Bytes()-c.Offset {
		return fmt.Errorf("%w: tensor %q: a piece of %d bytes at byte %d overruns its %d bytes", ErrIPC, c.Name, len(c.Data), c.Offset, m.Bytes())
	}
	if _, err := u.f.WriteAt(c.Data, u.l.DataPos(i)+c.Offset); err != nil {
		return fmt.Errorf("writing tensor %q: %w", c.Name, err)
	}
	u.next[i] += int64(len(c.Data))
	u.total += int64(len(c.Data))
	return nil
}

// Bytes is how many tensor bytes were written so far.
func (u *UploadWriter) Bytes() int64 { return u.total }

// Close finishes the file: an incomplete tensor is an error naming it
// (and the partial file is removed); otherwise the file is fsynced and
// renamed onto path, and the folder fsynced.
func (u *UploadWriter) Close() error {
	var first string
	missing := 0
	for i, m := range u.l.metas {
		if u.next[i] != m.Bytes() {
			if missing++; missing == 1 {
				first = fmt.Sprintf("tensor %q: %d of its %d bytes arrived", m.Name, u.next[i], m.Bytes())
			}
		}
	}
	if missing > 0 {
		u.Abort()
		if missing > 1 {
			first += fmt.Sprintf(" (and %d more incomplete tensors)", missing-1)
		}
		return fmt.Errorf("%w: incomplete upload: %s", ErrIPC, first)
	}
	err := u.f.Sync()
	if err == nil {
		err = u.f.Close()
	}
	if err == nil {
		err = os.Rename(u.tmp, u.path)
	}
	if err != nil {
		u.Abort()
		return fmt.Errorf("storing %s: %w", u.path, err)
	}
	u.done = true
	if d, err := os.Open(filepath.Dir(u.path)); err == nil {
		_ = d.Sync() // best effort: the rename is durable once the folder is
		_ = d.Close()
	}
	return nil
}

// Abort removes the partial file (a no-op after Close).
func (u *UploadWriter) Abort() {
	if !u.done {
		u.done = true
		_ = u.f.Close()
		_ = os.Remove(u.tmp)
	}
}
