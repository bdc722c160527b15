package topk

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// chunked serves x in parallel.Chunk pieces.
func chunked(x []float32) (int, Source) {
	n := parallel.NumChunks(len(x))
	return n, func(c int, dst []uint32) []uint32 {
		lo, hi := c*parallel.Chunk, min((c+1)*parallel.Chunk, len(x))
		dst = dst[:hi-lo]
		for j, v := range x[lo:hi] {
			dst[j] = AbsBits(v)
		}
		return dst
	}
}

// apply returns the kept mask by the Cut's rule.
func apply(cut Cut, x []float32) []bool {
	keep := make([]bool, len(x))
	for c := 0; c*parallel.Chunk < len(x); c++ {
		allow := cut.Allow(c)
		for j := c * parallel.Chunk; j < min((c+1)*parallel.Chunk, len(x)); j++ {
			a := AbsBits(x[j])
			switch {
			case cut.All:
				keep[j] = true
			case cut.None:
			case a > cut.Bits:
				keep[j] = true
			case a == cut.Bits && allow != 0:
				keep[j] = true
				allow--
			}
		}
	}
	return keep
}

// reference sorts indices by (|x| desc, index asc) and keeps the first k.
func reference(x []float32, k int) []bool {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		ma, mb := math.Abs(float64(x[a])), math.Abs(float64(x[b]))
		switch {
		case ma > mb:
			return -1
		case ma < mb:
			return 1
		}
		return 0
	})
	keep := make([]bool, len(x))
	for _, i := range idx[:k] {
		keep[i] = true
	}
	return keep
}

func TestSelectHandComputed(t *testing.T) {
	cases := []struct {
		name string
		x    []float32
		k    int64
		want []bool
	}{
		{"plain", []float32{1, -2, 3, 0.5}, 2, []bool{false, true, true, false}},
		{"ties by lower index", []float32{1, -1, 1, 2}, 2, []bool{true, false, false, true}},
		{"negative zero is zero", []float32{0, float32(math.Copysign(0, -1)), 5}, 2, []bool{true, false, true}},
		{"k=0", []float32{1, 2}, 0, []bool{false, false}},
		{"k=n", []float32{1, 2}, 2, []bool{true, true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, src := chunked(tc.x)
			got := apply(Select(tc.k, int64(len(tc.x)), n, src, 1), tc.x)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSelectMatchesSort(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	gens := map[string]func() float32{
		"normal":      func() float32 { return float32(r.NormFloat64()) },
		"heavy ties":  func() float32 { return float32(r.IntN(7) - 3) },
		"tiny values": func() float32 { return float32(r.NormFloat64() * 1e-30) },
	}
	for name, gen := range gens {
		for _, n := range []int{10, SmallN, SmallN + 1, 3*parallel.Chunk + 17} {
			x := make([]float32, n)
			for i := range x {
				x[i] = gen()
			}
			for _, density := range []float64{0.01, 0.2, 0.5, 0.999} {
				k := int(density * float64(n))
				for _, workers := range []int{1, 3} {
					nc, src := chunked(x)
					got := apply(Select(int64(k), int64(n), nc, src, workers), x)
					want := reference(x, k)
					if !slices.Equal(got, want) {
						t.Fatalf("%s n=%d k=%d workers=%d: selection differs from sort", name, n, k, workers)
					}
				}
			}
		}
	}
}
