package tensors

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// mapWritable maps size bytes of f read-write and shared, pre-faulting the
// pages (MAP_POPULATE) so that filling them costs no page-fault traps.
// The file's blocks are allocated first: on a full file system (a small
// /dev/shm) that fails here with ENOSPC, where writing through the map of
// a sparse file would kill the process with SIGBUS.
func mapWritable(f *os.File, size int64) ([]byte, error) {
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil && err != syscall.EOPNOTSUPP {
		return nil, fmt.Errorf("reserving %d bytes for %s: %w", size, f.Name(), err)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED|syscall.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", f.Name(), err)
	}
	return m, nil
}

// madvPopulateRead is MADV_POPULATE_READ (Linux 5.14): fault a range in
// with one call instead of one trap per page.
const madvPopulateRead = 22

// prefault maps in the pages of b (part of a file mapping) ahead of a
// read, ignoring errors (older kernels, memory that is not a mapping):
// it only saves page-fault traps.
func prefault(b []byte) {
	if len(b) == 0 {
		return
	}
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(&b[0]))
	lead := start % page
	_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, start-lead, uintptr(len(b))+lead, madvPopulateRead)
	runtime.KeepAlive(b)
}
