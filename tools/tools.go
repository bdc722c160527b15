//go:build tools

// Package tools pins the build tools of npsfuse: gopy (which generates the
// Python extension) built against a golang.org/x/tools that compiles on
package tools

import (
	_ "github.com/go-python/gopy"
	_ "golang.org/x/tools/cmd/goimports"
)
