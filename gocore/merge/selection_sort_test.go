package merge

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TestSortDesc checks the radix sort against a comparison sort: random
// bits, magnitudes with many ties, every value of the top bits, empty and
// single inputs.
func TestSortDesc(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	cases := map[string][]uint32{"empty": {}, "one": {42}}
	rnd := make([]uint32, 5000)
	for i := range rnd {
		rnd[i] = r.Uint32()
	}
	cases["random"] = rnd
	ties := make([]uint32, 3000)
	for i := range ties {
		ties[i] = uint32(r.IntN(7)) << 20 & 0x7fffffff
	}
	cases["ties"] = ties
	edges := []uint32{0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 2047, 2048, 1 << 22, 1<<22 - 1}
	cases["edges"] = edges
	for name, in := range cases {
		want := slices.Clone(in)
		slices.Sort(want)
		slices.Reverse(want)
		got := slices.Clone(in)
		sortDesc(got)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: sortDesc gave %v…, want %v…", name, got[:min(8, len(got))], want[:min(8, len(want))])
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
