package search

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// Optimizer is the ask/tell interface shared by CMAES and DE.
//
// Ask returns the points to evaluate (fresh copies; calling it again before
// Tell returns the same points). Tell takes one fitness per point, in Ask's
// order; higher is better unless the optimiser was built with Minimize, and a
// non-finite value is a failed evaluation that ranks worst. Best returns the
// best successfully evaluated point so far and its fitness as told (nil and
// the worst value, −Inf when maximising and +Inf when minimising, if there is
// none). Generation is the number of completed update steps.
type Optimizer interface {
	Ask() [][]float64
	Tell(fitness []float64) error
	Best() (x []float64, f float64)
	Generation() int
}

// ErrNoPending is returned (wrapped) by Tell when no Ask batch is outstanding.
var ErrNoPending = errors.New("search: Tell without a pending Ask")

// score maps a told fitness to an internal maximised score: non-finite values
// (failed evaluations) become −Inf, and minimised fitness is negated.
func score(f float64, minimize bool) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return math.Inf(-1)
	}
	if minimize {
		return -f
	}
	return f
}

// worst is the fitness Best reports when nothing has been evaluated successfully.
func worst(minimize bool) float64 {
	if minimize {
		return math.Inf(1)
	}
	return math.Inf(-1)
}

// rankDescending returns the indices of s ordered by decreasing value; ties
// keep increasing index order (stable). s must not contain NaN.
func rankDescending(s []float64) []int {
	idx := make([]int, len(s))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case s[a] > s[b]:
			return -1
		case s[a] < s[b]:
			return 1
		}
		return 0
	})
	return idx
}

// checkBounds validates optional box bounds for dimension n: both nil, or both
// of length n with finite lo[i] <= hi[i].
func checkBounds(lo, hi []float64, n int) error {
	if lo == nil && hi == nil {
		return nil
	}
	if len(lo) != n || len(hi) != n {
		return fmt.Errorf("bounds: len(Lo)=%d, len(Hi)=%d, want both %d (or both nil)", len(lo), len(hi), n)
	}
	for i := range lo {
		if !finite(lo[i]) || !finite(hi[i]) || lo[i] > hi[i] {
			return fmt.Errorf("bounds: coordinate %d: need finite Lo <= Hi, got [%v, %v]", i, lo[i], hi[i])
		}
	}
	return nil
}

// checkInside reports an error if x is not finite or outside the (optional) box.
func checkInside(x, lo, hi []float64, what string) error {
	for i, v := range x {
		if !finite(v) {
			return fmt.Errorf("%s[%d] = %v is not finite", what, i, v)
		}
		if lo != nil && (v < lo[i] || v > hi[i]) {
			return fmt.Errorf("%s[%d] = %v is outside [%v, %v]", what, i, v, lo[i], hi[i])
		}
	}
	return nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func allFinite(x []float64) bool {
	for _, v := range x {
		if !finite(v) {
			return false
		}
	}
	return true
}

func clone2(x [][]float64) [][]float64 {
	if x == nil {
		return nil
	}
	out := make([][]float64, len(x))
	for i, r := range x {
		out[i] = slices.Clone(r)
	}
	return out
}
