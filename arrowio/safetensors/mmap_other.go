//go:build !linux

package safetensors

import "os"

// mapFile reads the whole file: the memory-mapped path is Linux only.
func mapFile(path string) ([]byte, func([]byte) error, error) {
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, ioErr(path, err)
	}
	return buf, nil, nil
}
