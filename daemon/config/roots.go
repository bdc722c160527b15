package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// ErrOutsideRoots marks a path that is not inside any data root.
var ErrOutsideRoots = fault.New(fault.Permission, "path outside the data roots")

// Roots is the set of directories jobs may touch.
type Roots struct {
	dirs []string // cleaned, links resolved
}

// NewRoots builds the set from directories; each is resolved through its
// links (they must exist).
func NewRoots(dirs ...string) (Roots, error) {
	var r Roots
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p, err := resolveRoot(d)
		if err != nil {
			return Roots{}, fmt.Errorf("data root: %w", err)
		}
		r.dirs = append(r.dirs, p)
	}
	return r, nil
}

// Dirs lists the roots.
func (r Roots) Dirs() []string { return append([]string(nil), r.dirs...) }

// Check returns the resolved form of path if it lies inside a root (a root
// itself counts), and an error wrapping ErrOutsideRoots otherwise. path
// must be absolute. A path that does not exist yet (an output) is judged
// by its nearest existing ancestor, resolved through links, plus the rest.
// Cost: one lstat per path component.
//
// The check is made when a job is submitted and again when it runs; a
// link swapped in between those and the open is not detected (the
// daemon's user owns the roots, so that is the user racing themselves).
func (r Roots) Check(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%w: %q is not an absolute path", ErrOutsideRoots, path)
	}
	p := filepath.Clean(path)
	resolved, err := resolveExisting(p)
	if err != nil {
		return "", fmt.Errorf("%q: %w", path, err)
	}
	for _, d := range r.dirs {
		if resolved == d || strings.HasPrefix(resolved, d+string(filepath.Separator)) || d == "/" {
			return resolved, nil
		}
	}
	roots := "none configured"
	if len(r.dirs) > 0 {
		roots = strings.Join(r.dirs, ", ")
	}
	if resolved != p {
		return "", fmt.Errorf("%w: %s (resolves to %s) is outside the data roots (%s)", ErrOutsideRoots, path, resolved, roots)
	}
	return "", fmt.Errorf("%w: %s is outside the data roots (%s)", ErrOutsideRoots, path, roots)
}

// resolveExisting resolves the links of the longest existing prefix of p
// and appends the rest unchanged.
func resolveExisting(p string) (string, error) {
	rest := ""
	cur := p
	for {
		if _, err := os.Lstat(cur); err == nil {
			r, err := filepath.EvalSymlinks(cur)
			if err != nil {
				return "", err
			}
			return filepath.Join(r, rest), nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return p, nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}
