package nps

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/linalg"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// A 2×3 case by hand: dst + U·diag(c)·Vᵀ with U = [[1,2],[0,-1]],
// c = (2, 0.5), Vᵀ = [[1,0,2],[4,-2,0]], dst = 1:
// row 0: 1 + 1·2·(1,0,2) + 2·0.5·(4,-2,0) = (7, -1, 5);
// row 1: 1 + 0 + (-1)·0.5·(4,-2,0) = (-1, 2, 1).
func TestAddLowRankHandComputed(t *testing.T) {
	u := linalg.Matrix{Rows: 2, Cols: 2, Data: []float32{1, 2, 0, -1}}
	vt := linalg.Matrix{Rows: 2, Cols: 3, Data: []float32{1, 0, 2, 4, -2, 0}}
	dst := []float32{1, 1, 1, 1, 1, 1}
	if err := addLowRank(dst, u, []float32{2, 0.5}, vt); err != nil {
		t.Fatal(err)
	}
	want := []float32{7, -1, 5, -1, 2, 1}
	if !slices.Equal(dst, want) {
		t.Fatalf("got %v, want %v", dst, want)
	}
}

// addLowRank is bit-identical to linalg.ApplyWeighted with beta = 1 (one
// gonum Sgemm) for wide, tall, tiled (r·n·4 > lowRankTileBytes) and
// degenerate shapes, with zero coefficients and at every thread count.
func TestAddLowRankMatchesApplyWeighted(t *testing.T) {
	cases := []struct {
		name    string
		m, n, r int
		zeroC   bool
	}{
		{"wide", 33, 70, 5, false},
		{"tall", 90, 20, 7, false},
		{"square rank 64", 128, 128, 64, false},
		{"tiled columns", 40, 1300, 64, false},
		{"tiled tall", 1400, 1100, 64, false},
		{"one row", 1, 50, 3, false},
		{"one column", 50, 1, 1, false},
		{"zero coefficients", 30, 30, 6, true},
	}
	defer parallel.SetThreads(0)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(tc.m), uint64(tc.n)))
			u := linalg.Matrix{Rows: tc.m, Cols: tc.r, Data: randn(r, tc.m*tc.r)}
			vt := linalg.Matrix{Rows: tc.r, Cols: tc.n, Data: randn(r, tc.r*tc.n)}
			coef := randn(r, tc.r)
			if tc.zeroC {
				coef[0], coef[3] = 0, 0
			}
			base := randn(r, tc.m*tc.n)
			want := slices.Clone(base)
			if err := linalg.ApplyWeighted(want, u, coef, vt, 1); err != nil {
				t.Fatal(err)
			}
			for _, threads := range []int{1, 2, 5} {
				parallel.SetThreads(threads)
				got := slices.Clone(base)
				if err := addLowRank(got, u, coef, vt); err != nil {
					t.Fatal(err)
				}
				for i := range got {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("threads %d: element %d = %v, ApplyWeighted gives %v", threads, i, got[i], want[i])
					}
				}
			}
		})
	}
}

func TestAddLowRankShapeErrors(t *testing.T) {
	u := linalg.Matrix{Rows: 3, Cols: 2, Data: make([]float32, 6)}
	vt := linalg.Matrix{Rows: 2, Cols: 4, Data: make([]float32, 8)}
	tests := []struct {
		name string
		dst  []float32
		u    linalg.Matrix
		coef []float32
		vt   linalg.Matrix
	}{
		{"dst length", make([]float32, 11), u, make([]float32, 2), vt},
		{"coef length", make([]float32, 12), u, make([]float32, 3), vt},
		{"inner dimension", make([]float32, 12), u, make([]float32, 2), linalg.Matrix{Rows: 3, Cols: 4, Data: make([]float32, 12)}},
		{"u data", make([]float32, 12), linalg.Matrix{Rows: 3, Cols: 2, Data: make([]float32, 5)}, make([]float32, 2), vt},
	}
	for _, tc := range tests {
		if err := addLowRank(tc.dst, tc.u, tc.coef, tc.vt); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
	// Empty dimensions are no-ops.
	if err := addLowRank(nil, linalg.Matrix{Rows: 0, Cols: 2}, make([]float32, 2), linalg.Matrix{Rows: 2, Cols: 0}); err != nil {
		t.Errorf("empty: %v", err)
	}
}
