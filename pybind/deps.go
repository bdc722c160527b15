//go:build tools

package pybind

// The code gopy generates for this package imports gopyh; requiring it here
// keeps it in go.mod through `go mod tidy`.
import _ "github.com/go-python/gopy/gopyh"
