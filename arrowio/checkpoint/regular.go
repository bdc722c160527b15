package checkpoint

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// OpenRegular opens path for reading only if it is a regular file. The
// open itself cannot block: it is non-blocking, so a FIFO swapped in after
// a check (or never checked) is refused, not waited on forever.
func OpenRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, safetensors.FileKind(st.Mode()))
	}
	return f, nil
}

// ReadRegular reads a regular file whole (see OpenRegular).
func ReadRegular(path string) ([]byte, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}
