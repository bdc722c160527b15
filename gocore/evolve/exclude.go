package evolve

import (
	"fmt"
	"regexp"
)

// Exclude is the rule that keeps tensors out of an evolution (task heads,
// BatchNorm statistics): a tensor is excluded when one of the patterns,
// a regular expression, matches anywhere in its name — Python's
// re.search, which npsfuse.Evolver applies, and what the daemon's evolve
// sessions apply through this type. The syntax is Go's RE2, the part of
// Python's that has no look-around and no back-references;
// testdata/exclude.json holds cases that tests on both sides check.
type Exclude []*regexp.Regexp

// CompileExclude compiles the patterns of an exclude rule; errors wrap
// ErrInput and name the pattern.
func CompileExclude(patterns []string) (Exclude, error) {
	x := make(Exclude, len(patterns))
	for i, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("%w: exclude: bad regular expression %q: %v", ErrInput, p, err)
		}
		x[i] = re
	}
	return x, nil
}

// Excludes reports whether the rule keeps the tensor called name out of
// the evolution.
func (x Exclude) Excludes(name string) bool {
	for _, re := range x {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}
