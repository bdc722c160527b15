package safetensors

import (
	"os"
	"sync"
	"unsafe"
)

// Direct writing (issue 15). A merge's output used to reach the disk
// through the page cache: every byte copied by the kernel into fresh
// page-cache pages (on the virtual machines measured, a third of a
// cold 1.1B merge's CPU time went to that copy, the first touch of each
// fresh page costing microseconds), and the output then evicted other
// files from the cache. With Direct, a Writer whose tensors arrive in
// layout order collects the file in an aligned buffer and writes it in
// large blocks with O_DIRECT, from the buffer to the device. Anything it
// cannot do that way it does as before: a write out of layout order, or a
// filesystem that refuses O_DIRECT (tmpfs), hands what the buffer holds to
// the ordinary file and turns direct writing off for the rest of the file;
// the last, partial block is always written the ordinary way. The bytes of
// the file are the same either way.

// directBlock is the size of one direct write, a multiple of every
// device's logical block size.
const directBlock = 8 << 20

// directAlign is the alignment of the buffer's address, of file offsets
// and of lengths that O_DIRECT needs (4 KiB covers every logical block
// size in use).
const directAlign = 4096

// direct is a Writer's direct-writing state.
type direct struct {
	mu   sync.Mutex
	f    *os.File // the temporary file opened with O_DIRECT; nil once off
	buf  []byte   // directBlock bytes at an aligned address
	from int64    // file offset of buf[0] (aligned)
	n    int      // bytes of buf in use
}

// openDirectFile opens path for writing with O_DIRECT (a variable so that
// tests can make it fail).
var openDirectFile = openDirect

// Direct turns direct writing on for this Writer (see above); it must be
// called before any tensor is written. It reports whether the file could
// be opened for it; when not, the Writer writes as before.
func (w *Writer) Direct() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done || w.dio != nil || w.anyWritten() || w.dataStart > directBlock {
		return false // (a header larger than the buffer: written as before)
	}
	f, err := openDirectFile(w.tmp)
	if err != nil {
		return false
	}
	raw := make([]byte, directBlock+directAlign)
	off := int((directAlign - uintptr(unsafe.Pointer(unsafe.SliceData(raw)))%directAlign) % directAlign)
	d := &direct{f: f, buf: raw[off : off+directBlock : off+directBlock]}
	// The buffer starts with the file's first bytes: the 8-byte length and
	// the header (written through the ordinary file too, by NewWriter).
	if _, err := w.f.ReadAt(d.buf[:w.dataStart], 0); err != nil {
		_ = f.Close()
		return false
	}
	d.n = int(w.dataStart)
	w.dio = d
	return true
}

// anyWritten reports whether some tensor has bytes written.
func (w *Writer) anyWritten() bool {
	for _, n := range w.written {
		if n > 0 {
			return true
		}
	}
	return false
}

// writeAt writes p at file offset off: into the direct buffer when it
// continues what the buffer holds, else to the ordinary file (after the
// buffer's bytes, with direct writing turned off).
func (w *Writer) writeAt(p []byte, off int64) (int, error) {
	d := w.dio
	if d == nil {
		return w.f.WriteAt(p, off)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil || off != d.from+int64(d.n) {
		if err := w.directOff(d); err != nil {
			return 0, err
		}
		return w.f.WriteAt(p, off)
	}
	done := 0
	for done < len(p) {
		c := copy(d.buf[d.n:], p[done:])
		d.n += c
		done += c
		if d.n < len(d.buf) {
			break
		}
		if _, err := d.f.WriteAt(d.buf, d.from); err != nil {
			// Refused (a filesystem without O_DIRECT for this file, or
			// a device error): the ordinary file takes the block and the
			// rest of p, and reports its own error if it has one.
			if err := w.directOff(d); err != nil {
				return 0, err
			}
			if done < len(p) {
				if _, err := w.f.WriteAt(p[done:], off+int64(done)); err != nil {
					return 0, err
				}
			}
			return len(p), nil
		}
		d.from += int64(len(d.buf))
		d.n = 0
	}
	return len(p), nil
}

// directOff writes what the buffer holds to the ordinary file and turns
// direct writing off. Called with d.mu held.
func (w *Writer) directOff(d *direct) error {
	if d.f == nil {
		return nil
	}
	_ = d.f.Close()
	d.f = nil
	if d.n > 0 {
		if _, err := w.f.WriteAt(d.buf[:d.n], d.from); err != nil {
			return err
		}
		d.n = 0
	}
	return nil
}

// directClose ends direct writing before Close syncs the file: the last,
// partial block goes through the ordinary file.
func (w *Writer) directClose() error {
	if w.dio == nil {
		return nil
	}
	d := w.dio
	d.mu.Lock()
	defer d.mu.Unlock()
	return w.directOff(d)
}

// directDiscard closes the direct file without writing anything more.
func (w *Writer) directDiscard() {
	if w.dio == nil {
		return
	}
	d := w.dio
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f != nil {
		_ = d.f.Close()
		d.f = nil
	}
	d.n = 0
}
