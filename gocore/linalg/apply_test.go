package linalg

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

func TestApplyWeightedHandComputed(t *testing.T) {
	// U = [1 2; 0 1; 3 -1], coef = (2, -1), Vt = [1 0; 1 1].
	// U·diag(c) = [2 -2; 0 -1; 6 1];  ·Vt = [0 -2; -1 -1; 7 1].
	u := Matrix{Rows: 3, Cols: 2, Data: []float32{1, 2, 0, 1, 3, -1}}
	vt := Matrix{Rows: 2, Cols: 2, Data: []float32{1, 0, 1, 1}}
	coef := []float32{2, -1}
	cases := []struct {
		name string
		beta float32
		dst  []float32
		want []float32
	}{
		{"beta 0 ignores NaN", 0, []float32{float32(math.NaN()), 1, 2, 3, 4, 5}, []float32{0, -2, -1, -1, 7, 1}},
		{"beta 1", 1, []float32{1, 1, 1, 1, 1, 1}, []float32{1, -1, 0, 0, 8, 2}},
		{"beta 0.5", 0.5, []float32{2, 4, 6, 8, 10, 12}, []float32{1, 0, 2, 3, 12, 7}},
	}
	for _, tc := range cases {
		if err := ApplyWeighted(parallel.Pool{}, tc.dst, u, coef, vt, tc.beta); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for i := range tc.want {
			if tc.dst[i] != tc.want[i] {
				t.Errorf("%s: dst = %v, want %v", tc.name, tc.dst, tc.want)
				break
			}
		}
	}
}

// TestApplyWeightedRandom compares with a float64 triple loop for both the
// scale-U (m <= n) and scale-Vt (m > n) paths, including zero coefficients.
func TestApplyWeightedRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	fill := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		return x
	}
	for _, sh := range [][3]int{{70, 130, 9}, {130, 70, 9}, {64, 64, 1}, {200, 150, 40}} {
		m, n, r := sh[0], sh[1], sh[2]
		u := Matrix{Rows: m, Cols: r, Data: fill(m * r)}
		vt := Matrix{Rows: r, Cols: n, Data: fill(r * n)}
		coef := fill(r)
		coef[0] = 0
		dst := fill(m * n)
		want := make([]float64, m*n)
		const beta = -0.75
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				s := beta * float64(dst[i*n+j])
				for p := 0; p < r; p++ {
					s += float64(u.Data[i*r+p]) * float64(coef[p]) * float64(vt.Data[p*n+j])
				}
				want[i*n+j] = s
			}
		}
		if err := ApplyWeighted(parallel.Pool{}, dst, u, coef, vt, beta); err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if math.Abs(float64(dst[i])-want[i]) > 1e-5*(1+math.Sqrt(float64(r))) {
				t.Fatalf("%v: dst[%d] = %g, want %g", sh, i, dst[i], want[i])
			}
		}
	}
}

func TestApplyWeightedEdgeCases(t *testing.T) {
	// r = 0: only the beta scaling remains.
	dst := []float32{1, 2, 3, 4}
	if err := ApplyWeighted(parallel.Pool{}, dst, NewMatrix(2, 0), nil, NewMatrix(0, 2), 3); err != nil {
		t.Fatal(err)
	}
	for i, want := range []float32{3, 6, 9, 12} {
		if dst[i] != want {
			t.Errorf("r=0: dst = %v", dst)
			break
		}
	}
	bad := []struct {
		name  string
		dst   []float32
		u, vt Matrix
		coef  []float32
	}{
		{"coef length", make([]float32, 6), NewMatrix(2, 2), NewMatrix(2, 3), []float32{1}},
		{"inner dims", make([]float32, 6), NewMatrix(2, 2), NewMatrix(3, 3), []float32{1, 1}},
		{"dst length", make([]float32, 5), NewMatrix(2, 2), NewMatrix(2, 3), []float32{1, 1}},
		{"u data", make([]float32, 6), Matrix{Rows: 2, Cols: 2}, NewMatrix(2, 3), []float32{1, 1}},
		{"vt data", make([]float32, 6), NewMatrix(2, 2), Matrix{Rows: 2, Cols: 3}, []float32{1, 1}},
	}
	for _, tc := range bad {
		if err := ApplyWeighted(parallel.Pool{}, tc.dst, tc.u, tc.coef, tc.vt, 1); !errors.Is(err, errShape) {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

func TestMatrixHelpers(t *testing.T) {
	m := Matrix{Rows: 2, Cols: 3, Data: []float32{1, 2, 3, 4, 5, 6}}
	tr := m.Transpose()
	if tr.Rows != 3 || tr.Cols != 2 {
		t.Fatalf("transpose shape %d×%d", tr.Rows, tr.Cols)
	}
	for i, want := range []float32{1, 4, 2, 5, 3, 6} {
		if tr.Data[i] != want {
			t.Fatalf("transpose data %v", tr.Data)
		}
	}
	if m.At(1, 2) != 6 || m.At(0, 1) != 2 {
		t.Errorf("At: got %v %v", m.At(1, 2), m.At(0, 1))
	}
	defer func() {
		if recover() == nil {
			t.Error("At out of range did not panic")
		}
	}()
	m.At(2, 0)
}
