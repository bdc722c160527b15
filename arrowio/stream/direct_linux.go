//go:build linux

package stream

import (
	"os"
	"syscall"
	"unsafe"
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

// residentShare is the fraction of the pages holding bs (slices of file
// mappings) that are in the page cache; 1 when it cannot tell (the caller
// then keeps reading through the mapping).
func residentShare(bs [][]byte) float64 {
	page := uintptr(os.Getpagesize())
	var in, all int
	var vec []byte
	for _, b := range bs {
		if len(b) == 0 {
			continue
		}
		start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		lo := start &^ (page - 1)
		n := int((start + uintptr(len(b)) - lo + page - 1) / page)
		region := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(b)), -int(start-lo))), n*int(page))
		if cap(vec) < n {
			vec = make([]byte, n)
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(region))),
			uintptr(len(region)), uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); e != 0 {
			return 1
		}
		for _, v := range vec[:n] {
			in += int(v & 1)
		}
		all += n
	}
	if all == 0 {
		return 1
	}
	return float64(in) / float64(all)
}
