//go:build !linux

package safetensors

import (
	"errors"
	"os"
)

// openDirect fails: direct writing is implemented for Linux only.
func openDirect(string) (*os.File, error) {
	return nil, errors.New("O_DIRECT is not available on this system")
}
