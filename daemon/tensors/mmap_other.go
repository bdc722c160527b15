//go:build !linux

package tensors

import (
	"fmt"
	"os"
	"syscall"
)

// mapWritable maps size bytes of f read-write and shared.
func mapWritable(f *os.File, size int64) ([]byte, error) {
	m, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", f.Name(), err)
	}
	return m, nil
}

// prefault does nothing here: page faults are taken as they come.
func prefault([]byte) {}
