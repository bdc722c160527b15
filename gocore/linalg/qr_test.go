package linalg

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

// projectionDefect returns max |(P·x − x)| over the columns x of a, where P
// projects onto the span of q's columns (cols) or rows (!cols), in float64.
func projectionDefect(a, q Matrix, cols bool) float64 {
	get := func(m Matrix, i, j int) float64 { // (vector j, coordinate i)
		if cols {
			return float64(m.Data[i*m.Cols+j])
		}
		return float64(m.Data[j*m.Cols+i])
	}
	dim, na, nq := a.Rows, a.Cols, q.Cols
	if !cols {
		dim, na, nq = a.Cols, a.Rows, q.Rows
	}
	worst := 0.0
	for j := 0; j < na; j++ {
		res := make([]float64, dim)
		for i := range res {
			res[i] = get(a, i, j)
		}
		for p := 0; p < nq; p++ {
			d := 0.0
			for i := range res {
				d += get(q, i, p) * get(a, i, j)
			}
			for i := range res {
				res[i] -= d * get(q, i, p)
			}
		}
		for _, v := range res {
			worst = math.Max(worst, math.Abs(v))
		}
	}
	return worst
}

func TestOrthonormalize(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	gauss := func(m, n int) Matrix {
		a := NewMatrix(m, n)
		for i := range a.Data {
			a.Data[i] = float32(rng.NormFloat64())
		}
		return a
	}
	deficient := gauss(40, 6) // columns 3..5 = copies of 0..2 scaled, column 5 zero
	for i := 0; i < 40; i++ {
		deficient.Data[i*6+3] = 2 * deficient.Data[i*6]
		deficient.Data[i*6+4] = -deficient.Data[i*6+1]
		deficient.Data[i*6+5] = 0
	}
	cases := []struct {
		name string
		a    Matrix // orthonormalised by columns; its transpose by rows
	}{
		{"gaussian 50x8", gauss(50, 8)},
		{"square 16", gauss(16, 16)},
		{"rank deficient 40x6", deficient},
		{"zero 10x4", NewMatrix(10, 4)},
		{"single column", Matrix{Rows: 3, Cols: 1, Data: []float32{3, 0, 4}}},
	}
	for _, tc := range cases {
		orig := append([]float32(nil), tc.a.Data...)
		q, err := OrthonormalizeCols(tc.a)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for i := range orig {
			if orig[i] != tc.a.Data[i] {
				t.Fatalf("%s: input modified", tc.name)
			}
		}
		if d := orthoDefect(q, true); d > 1e-5 {
			t.Errorf("%s cols: ‖QᵀQ − I‖ = %g", tc.name, d)
		}
		if d := projectionDefect(tc.a, q, true); d > 1e-5 {
			t.Errorf("%s cols: range(A) ⊄ range(Q), defect %g", tc.name, d)
		}
		at := tc.a.Transpose()
		qr, err := OrthonormalizeRows(at)
		if err != nil {
			t.Fatalf("%s rows: %v", tc.name, err)
		}
		if d := orthoDefect(qr, false); d > 1e-5 {
			t.Errorf("%s rows: ‖QQᵀ − I‖ = %g", tc.name, d)
		}
		if d := projectionDefect(at, qr, false); d > 1e-5 {
			t.Errorf("%s rows: row space not contained, defect %g", tc.name, d)
		}
	}
	// Hand-computed: the single column (3, 0, 4) normalises to ±(0.6, 0, 0.8);
	// the sign depends on the Householder convention, so only |q_i| is checked.
	q, _ := OrthonormalizeCols(Matrix{Rows: 3, Cols: 1, Data: []float32{3, 0, 4}})
	for i, want := range []float64{0.6, 0, 0.8} {
		if math.Abs(math.Abs(float64(q.Data[i]))-want) > 1e-7 {
			t.Errorf("single column: q[%d] = %g, want ±%g", i, q.Data[i], want)
		}
	}
}

func TestOrthonormalizeErrors(t *testing.T) {
	if _, err := OrthonormalizeCols(NewMatrix(3, 4)); !errors.Is(err, errShape) {
		t.Errorf("cols of wide matrix: err = %v", err)
	}
	if _, err := OrthonormalizeRows(NewMatrix(4, 3)); !errors.Is(err, errShape) {
		t.Errorf("rows of tall matrix: err = %v", err)
	}
	bad := Matrix{Rows: 2, Cols: 2, Data: make([]float32, 3)}
	if _, err := OrthonormalizeCols(bad); !errors.Is(err, errShape) {
		t.Errorf("cols of bad matrix: err = %v", err)
	}
	if _, err := OrthonormalizeRows(bad); !errors.Is(err, errShape) {
		t.Errorf("rows of bad matrix: err = %v", err)
	}
}
