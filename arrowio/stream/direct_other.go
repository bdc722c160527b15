//go:build !linux

package stream

import (
	"errors"
	"os"
)

// directSupported: O_DIRECT is Linux's; elsewhere every input is read
// through its mapping.
const directSupported = false

func ringAlloc(n int) ([]byte, error) { return make([]byte, n), nil }
func ringFree([]byte)                 {}

func pread(f *os.File, b []byte, off int64) (int, error) { return f.ReadAt(b, off) }

var errInterrupted = errors.New("interrupted")

var errInvalid = errors.New("invalid argument")

// openReadDirect: O_DIRECT is Linux's; elsewhere every input is read
// through its mapping.
func openReadDirect(string) (*os.File, error) {
	return nil, errors.New("O_DIRECT is not available on this system")
}
