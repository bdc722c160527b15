//go:build !linux

package safetensors

import "os"

// mapFile reads the whole file: the memory-mapped path is Linux only. A
// FIFO or device is refused before it is opened (reading it could block).
func mapFile(path string) ([]byte, func([]byte) error, error) {
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return nil, nil, fileErr(path, ErrIO, "not a regular file ("+st.Mode().Type().String()+")", nil)
	}
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, ioErr(path, err)
	}
	return buf, nil, nil
}
