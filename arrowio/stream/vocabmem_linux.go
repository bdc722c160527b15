//go:build linux

package stream

import (
	"fmt"
	"syscall"
)

// vocabReserve maps n bytes of anonymous memory: address space only, no
// pages until they are written (a merged vocabulary tensor, which the
// Merger views from the plan on but which is filled only for its job).
func vocabReserve(n int) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("reserve %d bytes: %w", n, err)
	}
	return b, nil
}

// vocabRelease gives b's pages back to the system; the mapping stays (and
// reads as zeros).
func vocabRelease(b []byte) {
	if len(b) > 0 {
		_ = syscall.Madvise(b, syscall.MADV_DONTNEED)
	}
}

// vocabFree unmaps b.
func vocabFree(b []byte) {
	if len(b) > 0 {
		_ = syscall.Munmap(b)
	}
}
