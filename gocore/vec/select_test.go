package vec

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// coarse draws values from a small set (with ±0) so that ties, zero sums and
// disagreeing signs are common.
func coarse(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for j := range x {
		switch r.IntN(6) {
		case 0:
			x[j] = 0
		case 1:
			x[j] = float32(math.Copysign(0, -1))
		default:
			x[j] = float32(r.IntN(7)-3) * 0.5
		}
	}
	return x
}

func TestSelectionLoopsMatchScalar(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{0, 1, 7, 8, 9, 33, 250, 4096} {
		a, b := coarse(r, n), coarse(r, n)
		got, want := make([]float32, n), make([]float32, n)
		AbsDiff(got, a, b)
		absDiffGo(want, a, b)
		sameBits(t, "AbsDiff", got, want)

		bits, wantBits := make([]uint32, n), make([]uint32, n)
		AbsBits(bits, a)
		absBitsGo(wantBits, a)
		if !slices.Equal(bits, wantBits) {
			t.Fatalf("n=%d: AbsBits differs", n)
		}
		sc, wantSc := make([]float32, n), make([]float32, n)
		Scale(sc, a, -0.75)
		scaleGo(wantSc, a, -0.75)
		sameBits(t, "Scale", sc, wantSc)

		mags := want
		for _, win := range [][2]uint32{{0, 0}, {0, 0x3f800000}, {0x3f000000, 0x3fc00000}, {0x40000000, 0x7fffffff}, {1, 0x80000000}} {
			ga, gc := CountWindow(mags, win[0], win[1], []uint32{42})
			wa, wc := countWindowGo(mags, win[0], win[1], []uint32{42})
			if ga != wa || !slices.Equal(gc, wc) {
				t.Fatalf("n=%d window %x: CountWindow = %d, %v; want %d, %v", n, win, ga, gc, wa, wc)
			}
		}
		for _, b := range []uint32{0, 0x3f000000, 0x3f800000, 0x3fc00000, 0x7f800000} {
			for _, allow := range []int{-1, 0, 1, 3, n} {
				g, w := slices.Clone(a), slices.Clone(a)
				ra, rw := KeepTop(g, b, allow), keepTopGo(w, b, allow)
				if ra != rw {
					t.Fatalf("n=%d b=%x allow=%d: allowance left %d, want %d", n, b, allow, ra, rw)
				}
				sameBits(t, "KeepTop", g, w)
			}
		}
		for _, T := range []int{1, 2, 3, 5, 9} {
			x := make([][]float32, T)
			w := make([]float32, T)
			for m := range x {
				x[m] = coarse(r, n)
				w[m] = []float32{1, 0.5, -1, 2, 0}[m%5]
			}
			for _, norm := range []bool{false, true} {
				DisjointMean(got, x, w, norm)
				disjointMeanGo(want, x, w, norm)
				sameBits(t, "DisjointMean", got, want)
			}
		}
	}
}

func TestDisjointMeanValues(t *testing.T) {
	tests := []struct {
		name string
		x    [][]float32
		w    []float32
		norm bool
		want float32
	}{
		{"agree", [][]float32{{1}, {3}}, []float32{1, 1}, true, 2},
		{"minority dropped", [][]float32{{2}, {-1}}, []float32{1, 1}, true, 2},
		{"sum", [][]float32{{2}, {4}, {-1}}, []float32{1, 1, 1}, false, 6},
		{"zero sum elects +", [][]float32{{1}, {-1}}, []float32{1, 1}, true, 1},
		{"none agree", [][]float32{{0}, {0}}, []float32{1, 1}, true, 0},
		{"weights of both signs divide by 1", [][]float32{{2}, {-2}}, []float32{1, -1}, true, 4},
	}
	for _, tc := range tests {
		out := make([]float32, 9)
		x := make([][]float32, len(tc.x))
		for m, v := range tc.x {
			x[m] = slices.Repeat(v, 9)
		}
		DisjointMean(out, x, tc.w, tc.norm)
		for j, v := range out {
			if v != tc.want {
				t.Errorf("%s: entry %d = %v, want %v", tc.name, j, v, tc.want)
			}
		}
	}
}
