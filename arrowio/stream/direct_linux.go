//go:build linux

package stream

import (
	"os"
	"syscall"
)

// directSupported: Linux has O_DIRECT.
const directSupported = true

// ringAlloc maps the ring outside Go's heap (page-aligned, as O_DIRECT
// needs), so that it does not raise the garbage collector's target.
func ringAlloc(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
}

// ringFree unmaps a ring from ringAlloc.
func ringFree(b []byte) {
	if len(b) > 0 {
		_ = syscall.Munmap(b)
	}
}

// pread is one pread(2) of f: no retry at the offset after a short read.
func pread(f *os.File, b []byte, off int64) (int, error) {
	return syscall.Pread(int(f.Fd()), b, off)
}

// errInterrupted is the error of a read a signal interrupted.
var errInterrupted error = syscall.EINTR

// errInvalid is the error O_DIRECT reads fail with where the filesystem or
// the alignment does not suit them.
var errInvalid error = syscall.EINVAL

// openReadDirect opens path for reading with O_DIRECT.
func openReadDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
}
