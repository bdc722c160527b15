package merge

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TestSortDescAt checks the partial radix sort against a full sort at
// every rank asked for: random bits, magnitudes that share their top 22
// bits in long runs, ties, ranks outside the slice.
func TestSortDescAt(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 6))
	for trial := range 40 {
		n := []int{0, 1, 2, 17, 1000, 65536}[trial%6]
		in := make([]uint32, n)
		for i := range in {
			switch trial % 4 {
			case 0:
				in[i] = r.Uint32()
			case 1: // runs of equal top bits
				in[i] = uint32(r.IntN(5))<<10 | uint32(r.IntN(1024))
			case 2: // ties
				in[i] = uint32(r.IntN(9)) << 8
			default: // magnitudes of small floats
				in[i] = 0x3c000000 + uint32(r.IntN(1<<22))
			}
		}
		want := slices.Clone(in)
		slices.Sort(want)
		slices.Reverse(want)
		at := []int{-3, n, n + 5}
		for range 6 {
			if n > 0 {
				at = append(at, r.IntN(n))
			}
		}
		if n > 0 {
			at = append(at, 0, n-1)
		}
		got := slices.Clone(in)
		sortDescAt(got, at)
		for _, k := range at {
			if k >= 0 && k < n && got[k] != want[k] {
				t.Fatalf("trial %d n=%d: rank %d holds %#x, want %#x", trial, n, k, got[k], want[k])
			}
		}
		slices.Sort(got)
		slices.Reverse(got)
		if !slices.Equal(got, want) {
			t.Fatalf("trial %d: not a permutation", trial)
		}
	}
}

// TestCheckedUnits checks which merges skip the merge pass's input checks:
// those whose top-k counting pass read (and checked) every input of the
// unit, and no other.
func TestCheckedUnits(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 9))
	for _, tc := range []struct {
		method string
		want   bool
	}{{"ties", true}, {"breadcrumbs_ties", true}, {"dare_ties", false}, {"task_arithmetic", false}} {
		ts := randomMerge(r, tensor.F32, [][]int{{50, 100}, {7}}, 2)
		e, err := newEngine(registry[tc.method], Params{Density: 0.5, Lambda: 1}, ts)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.prepareAll(); err != nil {
			t.Fatal(err)
		}
		for u := range e.units() {
			if got := e.checked != nil && e.checked[u]; got != tc.want {
				t.Fatalf("%s: unit %d checked = %v, want %v", tc.method, u, got, tc.want)
			}
		}
	}
}
