package tensors

import (
	"fmt"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// UploadWriter streams an uploaded tensor set, piece by piece, into a
// safetensors file: the manifest (every tensor's name, dtype and shape)
// comes first, so the file is laid out before any byte arrives; pieces
// of a tensor must then arrive in order. Close checks completeness,
// fsyncs and renames the file into place (safetensors.Writer).
type UploadWriter struct {
	w       *safetensors.Writer
	metas   map[string]Meta
	writers map[string]*safetensors.TensorWriter
	next    map[string]int64
	total   int64
	done    bool
}

// NewUploadWriter lays out path for the manifest metas.
func NewUploadWriter(path string, metas []Meta, metadata map[string]string) (*UploadWriter, error) {
	infos := make([]safetensors.TensorInfo, len(metas))
	u := &UploadWriter{metas: map[string]Meta{}, writers: map[string]*safetensors.TensorWriter{}, next: map[string]int64{}}
	for i, m := range metas {
		if m.Name == "" {
			return nil, fmt.Errorf("%w: a tensor has an empty name", ErrIPC)
		}
		if _, err := m.checkedBytes(); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrIPC, m.Name, err)
		}
		infos[i] = m.Info()
		u.metas[m.Name] = m
	}
	w, err := safetensors.NewWriter(path, infos, metadata)
	if err != nil {
		return nil, err
	}
	u.w = w
	return u, nil
}

// Put writes one piece. Its name must be in the manifest with the same
// dtype and shape, and it must start where the tensor's previous piece
// ended.
func (u *UploadWriter) Put(c Chunk) error {
	m, ok := u.metas[c.Name]
	if !ok {
		return fmt.Errorf("%w: tensor %q is not in the upload's manifest", ErrIPC, c.Name)
	}
	if dt, err := ParseDType(c.DType); err != nil || dt != m.DType || c.Shape != FormatShape(m.Shape) {
		return fmt.Errorf("%w: tensor %q: piece says %s [%s], the manifest %s [%s]", ErrIPC, c.Name, c.DType, c.Shape, WireName(m.DType), FormatShape(m.Shape))
	}
	if c.Offset != u.next[c.Name] {
		return fmt.Errorf("%w: tensor %q: piece at byte %d, expected %d (pieces must arrive in order)", ErrIPC, c.Name, c.Offset, u.next[c.Name])
	}
	tw := u.writers[c.Name]
	if tw == nil {
		var err error
		if tw, err = u.w.TensorWriter(c.Name); err != nil {
			return err
		}
		u.writers[c.Name] = tw
	}
	if _, err := tw.Write(c.Data); err != nil {
		return err
	}
	u.next[c.Name] += int64(len(c.Data))
	u.total += int64(len(c.Data))
	return nil
}

// Bytes is how many tensor bytes were written so far.
func (u *UploadWriter) Bytes() int64 { return u.total }

// Close finishes the file (an incomplete tensor is an error naming it).
func (u *UploadWriter) Close() error {
	u.done = true
	for name, m := range u.metas {
		if m.Bytes() == 0 && u.writers[name] == nil {
			if err := u.w.WriteTensor(name, nil); err != nil {
				return err
			}
		}
	}
	return u.w.Close()
}

// Abort removes the partial file.
func (u *UploadWriter) Abort() {
	if !u.done {
		u.done = true
		_ = u.w.Abort()
	}
}
