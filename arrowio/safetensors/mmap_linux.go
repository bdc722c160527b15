//go:build linux

package safetensors

import (
	"fmt"
	"os"
	"syscall"
)

// mapFile maps path read-only and shared. Files shorter than the 8-byte
// prefix (including empty files, which mmap refuses) are read instead, so
// newFile reports them as truncated. The unmap function is nil when nothing
// was mapped. The file is opened non-blocking, so that a FIFO or device
// named like a weight file is refused instead of blocking the open until
// a writer appears.
func mapFile(path string) ([]byte, func([]byte) error, error) {
	fd, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, ioErr(path, err)
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, nil, ioErr(path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fileErr(path, ErrIO, fmt.Sprintf("not a regular file (%s)", FileKind(st.Mode())), nil)
	}
	size := st.Size()
	if size < 8 {
		buf := make([]byte, size)
		if _, err := fd.ReadAt(buf, 0); err != nil && size > 0 {
			return nil, nil, ioErr(path, err)
		}
		return buf, nil, nil
	}
	if size != int64(int(size)) {
		return nil, nil, fileErr(path, ErrIO, fmt.Sprintf("%d bytes do not fit the address space", size), nil)
	}
	buf, err := syscall.Mmap(int(fd.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fileErr(path, ErrIO, "mmap", err)
	}
	return buf, syscall.Munmap, nil
}
