package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"unicode/utf8"
)

// Writer writes one safetensors file whose tensor list is fixed up front.
//
// The file is built in a temporary file path+".tmp-<random>" in the same
// directory; Close renames it onto path, Abort removes it. Until Close
// succeeds nothing at path changes. Tensors may be written in any order.
// Different tensors may be written concurrently from different goroutines;
// one TensorWriter must not be used by two goroutines at once. Close and
// Abort must not run concurrently with writes.
type Writer struct {
	path, tmp string
	infos     []TensorInfo // with offsets
	index     map[string]int
	dataStart int64

	mu      sync.RWMutex // writes hold RLock; Close/Abort/claims hold Lock
	f       *os.File
	claimed []bool
	written []int64 // bytes written per tensor; touched by the claim owner only
	done    bool    // Close or Abort ran
	closed  bool    // Close succeeded

	errMu sync.Mutex
	ioErr error // first write error

	dio *direct // direct writing (direct.go), nil when off
}

// NewWriter validates the tensor list (unique names other than
// "__metadata__", valid UTF-8 names and metadata, known dtypes, non-negative
// shapes, sizes that fit), lays the tensors out contiguously in the given
// order, creates the temporary file, writes the header (padded with spaces
// to a multiple of 8 bytes, so the data section starts 8-byte aligned) and
// sizes the file. Begin and End of the given TensorInfos are ignored; see
// Writer.Tensors for the computed ones. metadata is written as "__metadata__"
// with sorted keys when non-nil. Cost O(header size) plus the file creation.
func NewWriter(path string, tensors []TensorInfo, metadata map[string]string) (*Writer, error) {
	w := &Writer{path: path, index: make(map[string]int, len(tensors))}
	var off int64
	for _, t := range tensors {
		if _, dup := w.index[t.Name]; dup {
			return nil, tensorErr(path, t.Name, ErrDuplicate, "name given twice", nil)
		}
		if t.Name == metadataKey {
			return nil, tensorErr(path, t.Name, ErrBadHeader, "name is reserved for the metadata", nil)
		}
		if !utf8.ValidString(t.Name) {
			return nil, tensorErr(path, t.Name, ErrBadHeader, "name is not valid UTF-8", nil)
		}
		n, msg, kind := shapeSize(t.DType, t.Shape)
		if kind != nil {
			return nil, tensorErr(path, t.Name, kind, msg, nil)
		}
		if off > 1<<63-1-n {
			return nil, tensorErr(path, t.Name, ErrSizeMismatch, "file would exceed 2^63-1 bytes", nil)
		}
		w.index[t.Name] = len(w.infos)
		w.infos = append(w.infos, TensorInfo{Name: t.Name, DType: t.DType, Shape: slices.Clone(t.Shape), Begin: off, End: off + n})
		off += n
	}
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fileErr(path, ErrBadHeader, fmt.Sprintf("metadata entry %q is not valid UTF-8", k), nil)
		}
	}
	hdr := encodeHeader(w.infos, metadata)
	if len(hdr) > MaxHeaderSize {
		return nil, fileErr(path, ErrHeaderTooLarge, fmt.Sprintf(
			"header would take %d bytes, over the %d-byte limit", len(hdr), MaxHeaderSize), nil)
	}
	w.dataStart = 8 + int64(len(hdr))
	w.claimed = make([]bool, len(w.infos))
	w.written = make([]int64, len(w.infos))

	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, base+".tmp-*")
	if err != nil {
		return nil, ioErr(path, err)
	}
	w.f, w.tmp = f, f.Name()
	prefix := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+len(hdr)), uint64(len(hdr)))
	if _, err := f.Write(append(prefix, hdr...)); err != nil {
		w.discard()
		return nil, fileErr(path, ErrIO, "cannot write the header", err)
	}
	if err := f.Truncate(w.dataStart + off); err != nil {
		w.discard()
		return nil, fileErr(path, ErrIO, "cannot size the temporary file", err)
	}
	return w, nil
}

// encodeHeader renders the JSON header: "__metadata__" first (sorted keys),
// then the tensors in layout order, compact, padded with spaces to a length
// that is a multiple of 8.
func encodeHeader(infos []TensorInfo, metadata map[string]string) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	first := true
	sep := func() {
		if !first {
			b.WriteByte(',')
		}
		first = false
	}
	if metadata != nil {
		sep()
		writeJSONString(&b, metadataKey)
		b.WriteString(":{")
		for i, k := range slices.Sorted(maps.Keys(metadata)) {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(&b, k)
			b.WriteByte(':')
			writeJSONString(&b, metadata[k])
		}
		b.WriteByte('}')
	}
	for _, t := range infos {
		sep()
		writeJSONString(&b, t.Name)
		fmt.Fprintf(&b, `:{"dtype":"%s","shape":[`, t.DType)
		for i, s := range t.Shape {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%d", s)
		}
		fmt.Fprintf(&b, `],"data_offsets":[%d,%d]}`, t.Begin, t.End)
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	return b.Bytes()
}

// writeJSONString writes s as a JSON string without HTML escaping.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // cannot fail for a string
	b.Truncate(b.Len() - 1) // drop Encode's newline
}

// Tensors returns the layout: the tensors in file order with their computed
// Begin/End (relative to the data section). The slice is a fresh copy. O(T).
func (w *Writer) Tensors() []TensorInfo {
	out := make([]TensorInfo, len(w.infos))
	for i, t := range w.infos {
		t.Shape = slices.Clone(t.Shape)
		out[i] = t
	}
	return out
}

// DataOffset returns the file offset of the data section (a multiple of 8).
func (w *Writer) DataOffset() int64 { return w.dataStart }

// TensorWriter streams one tensor's bytes sequentially into a Writer.
type TensorWriter struct {
	w *Writer
	i int
}

// claim reserves tensor name for one writer.
func (w *Writer) claim(name string) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return 0, tensorErr(w.path, name, ErrClosed, "writer is closed", nil)
	}
	i, ok := w.index[name]
	if !ok {
		return 0, tensorErr(w.path, name, ErrNotFound, "not in the writer's tensor list", nil)
	}
	if w.claimed[i] {
		return 0, tensorErr(w.path, name, ErrDuplicate, "already written", nil)
	}
	w.claimed[i] = true
	return i, nil
}

// TensorWriter returns a writer for the named tensor's bytes, to be written
// sequentially in one or more Write calls totalling exactly its byte length.
// Each tensor can be claimed once (by TensorWriter or WriteTensor).
func (w *Writer) TensorWriter(name string) (*TensorWriter, error) {
	i, err := w.claim(name)
	if err != nil {
		return nil, err
	}
	return &TensorWriter{w: w, i: i}, nil
}

// Remaining returns how many bytes of the tensor are still to be written.
func (tw *TensorWriter) Remaining() int64 {
	t := tw.w.infos[tw.i]
	return t.ByteLen() - tw.w.written[tw.i]
}

// Write appends p to the tensor's bytes. Writing past the tensor's length
// writes nothing and fails with ErrSizeMismatch; I/O errors are also kept
// and reported again by Close.
func (tw *TensorWriter) Write(p []byte) (int, error) {
	w, t := tw.w, &tw.w.infos[tw.i]
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.done {
		return 0, tensorErr(w.path, t.Name, ErrClosed, "writer is closed", nil)
	}
	pos := w.written[tw.i]
	if int64(len(p)) > t.ByteLen()-pos {
		return 0, tensorErr(w.path, t.Name, ErrSizeMismatch, fmt.Sprintf(
			"writing %d bytes at offset %d overruns its %d bytes (dtype %v shape %s)",
			len(p), pos, t.ByteLen(), t.DType, formatShape(t.Shape)), nil)
	}
	n, err := w.writeAt(p, w.dataStart+t.Begin+pos)
	w.written[tw.i] += int64(n)
	if err != nil {
		err = tensorErr(w.path, t.Name, ErrIO, "write failed", err)
		w.errMu.Lock()
		if w.ioErr == nil {
			w.ioErr = err
		}
		w.errMu.Unlock()
	}
	return n, err
}

// WriteTensor writes the named tensor's bytes in one call; len(data) must
// equal its byte length (ErrSizeMismatch otherwise, and the tensor is then
// left unwritten, which Close reports). data is copied to the file, not
// retained. Each tensor can be written once.
func (w *Writer) WriteTensor(name string, data []byte) error {
	if i, ok := w.index[name]; ok && int64(len(data)) != w.infos[i].ByteLen() {
		t := w.infos[i]
		return tensorErr(w.path, name, ErrSizeMismatch, fmt.Sprintf(
			"got %d bytes, dtype %v shape %s needs %d", len(data), t.DType, formatShape(t.Shape), t.ByteLen()), nil)
	}
	tw, err := w.TensorWriter(name)
	if err != nil {
		return err
	}
	_, err = tw.Write(data)
	return err
}

// Close checks that every tensor was written in full, then fsyncs the
// temporary file, renames it onto path and fsyncs the directory. On any
// failure the temporary file is removed, path is left untouched, and the
// error names the first incomplete tensor (ErrIncomplete) or the I/O step.
// After Close, writes fail with ErrClosed; a second Close fails with
// ErrClosed; Abort is a no-op.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return fileErr(w.path, ErrClosed, "writer already closed", nil)
	}
	w.done = true
	if w.ioErr != nil {
		w.discard()
		return w.ioErr
	}
	missing := 0
	var first error
	for i, t := range w.infos {
		if w.written[i] != t.ByteLen() {
			missing++
			if first == nil {
				first = tensorErr(w.path, t.Name, ErrIncomplete, fmt.Sprintf(
					"%d of %d bytes written", w.written[i], t.ByteLen()), nil)
			}
		}
	}
	if first != nil {
		w.discard()
		if missing > 1 {
			e := first.(*Error)
			e.Msg += fmt.Sprintf(" (and %d more incomplete tensors)", missing-1)
		}
		return first
	}
	if err := w.directClose(); err != nil {
		w.discard()
		return fileErr(w.path, ErrIO, "write failed", err)
	}
	if err := w.f.Chmod(0o644); err != nil {
		w.discard()
		return fileErr(w.path, ErrIO, "chmod", err)
	}
	if err := w.f.Sync(); err != nil {
		w.discard()
		return fileErr(w.path, ErrIO, "fsync", err)
	}
	if err := w.f.Close(); err != nil {
		w.f = nil
		w.discard()
		return fileErr(w.path, ErrIO, "close", err)
	}
	w.f = nil
	if err := os.Rename(w.tmp, w.path); err != nil {
		w.discard()
		return fileErr(w.path, ErrIO, "rename", err)
	}
	w.closed = true
	if d, err := os.Open(filepath.Dir(w.path)); err == nil {
		_ = d.Sync() // best effort: the rename is durable once the directory is
		_ = d.Close()
	}
	return nil
}

// Abort discards the temporary file; path is left untouched. It is a no-op
// after Close or a previous Abort and always returns nil unless removing the
// temporary file fails.
func (w *Writer) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return nil
	}
	w.done = true
	return w.discard()
}

// discard closes and removes the temporary file.
func (w *Writer) discard() error {
	w.directDiscard()
	if w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
	if err := os.Remove(w.tmp); err != nil && !os.IsNotExist(err) {
		return fileErr(w.path, ErrIO, "removing the temporary file", err)
	}
	return nil
}

// Save writes tensors and metadata to path atomically (through a Writer).
// Tensors are laid out as the reference writer does: by dtype in decreasing
// declaration order of DType (8-byte types first, so every tensor is aligned
// to its element size), then by name. Every Data must have exactly
// ByteSize(DType, Shape) bytes; otherwise nothing is written and the error
// names the tensor. Cost O(total bytes) I/O.
func Save(path string, tensors map[string]Tensor, metadata map[string]string) error {
	names := slices.SortedFunc(maps.Keys(tensors), func(a, b string) int {
		return cmp.Or(cmp.Compare(tensors[b].DType, tensors[a].DType), cmp.Compare(a, b))
	})
	infos := make([]TensorInfo, len(names))
	for i, n := range names {
		t := tensors[n]
		infos[i] = TensorInfo{Name: n, DType: t.DType, Shape: t.Shape}
	}
	w, err := NewWriter(path, infos, metadata)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := w.WriteTensor(n, tensors[n].Data); err != nil {
			_ = w.Abort()
			return err
		}
	}
	return w.Close()
}
