package linalg

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
)

// randOrth64 returns an m×k (m >= k) float64 row-major matrix with
// orthonormal columns: the Q factor of a Gaussian matrix.
func randOrth64(rng *rand.Rand, m, k int) []float64 {
	a := make([]float64, m*k)
	for i := range a {
		a[i] = rng.NormFloat64()
	}
	tau := make([]float64, k)
	work := make([]float64, 1)
	lapack.Dgeqrf(m, k, a, k, tau, work, -1)
	work = make([]float64, int(work[0]))
	lapack.Dgeqrf(m, k, a, k, tau, work, len(work))
	lapack.Dorgqr(m, k, k, a, k, tau, work, -1)
	work = make([]float64, int(work[0]))
	lapack.Dorgqr(m, k, k, a, k, tau, work, len(work))
	return a
}

// known is a test matrix with an exactly known spectrum.
type known struct {
	a      Matrix    // float32 rounding of Q1·diag(s)·Q2ᵀ
	q1, q2 []float64 // m×r and n×r orthonormal factors, r = len(s)
	s      []float64 // exact singular values (descending)
}

// buildKnown returns A = Q1·diag(s)·Q2ᵀ (m×n) with random orthonormal
// factors, len(s) <= min(m, n), s descending.
func buildKnown(seed uint64, m, n int, s []float64) known {
	rng := rand.New(rand.NewPCG(seed, 7))
	r := len(s)
	q1 := randOrth64(rng, m, r)
	q2 := randOrth64(rng, n, r)
	q1s := make([]float64, m*r)
	for i := 0; i < m; i++ {
		for j := 0; j < r; j++ {
			q1s[i*r+j] = q1[i*r+j] * s[j]
		}
	}
	a64 := make([]float64, m*n)
	blas64.Implementation().Dgemm(blas.NoTrans, blas.Trans, m, n, r, 1, q1s, r, q2, r, 0, a64, n)
	a := NewMatrix(m, n)
	to32(a.Data, a64)
	return known{a: a, q1: q1, q2: q2, s: s}
}

func geometric(n int, ratio float64) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = math.Pow(ratio, float64(i))
	}
	return s
}

// flatDrop returns n values: `flat` ones followed by `low`.
func flatDrop(n, flat int, low float64) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = low
		if i < flat {
			s[i] = 1
		}
	}
	return s
}

// orthoDefect returns max |(XᵀX − I)_ij| for the columns of x (cols == true)
// or the rows of x (cols == false), accumulated in float64.
func orthoDefect(x Matrix, cols bool) float64 {
	vec := func(j int) []float64 {
		if cols {
			v := make([]float64, x.Rows)
			for i := range v {
				v[i] = float64(x.Data[i*x.Cols+j])
			}
			return v
		}
		v := make([]float64, x.Cols)
		for i := range v {
			v[i] = float64(x.Data[j*x.Cols+i])
		}
		return v
	}
	cnt := x.Rows
	if cols {
		cnt = x.Cols
	}
	vs := make([][]float64, cnt)
	for j := range vs {
		vs[j] = vec(j)
	}
	worst := 0.0
	for i := range vs {
		for j := range vs {
			d := 0.0
			for t := range vs[i] {
				d += vs[i][t] * vs[j][t]
			}
			if i == j {
				d--
			}
			worst = math.Max(worst, math.Abs(d))
		}
	}
	return worst
}

// residual2 returns ‖A − U·diag(S)·Vt‖_F² computed in float64.
func residual2(t *testing.T, a Matrix, s SVD) float64 {
	t.Helper()
	m, n, r := a.Rows, a.Cols, len(s.S)
	sum := 0.0
	row := make([]float64, n)
	for i := 0; i < m; i++ {
		for j := range row {
			row[j] = float64(a.Data[i*n+j])
		}
		for p := 0; p < r; p++ {
			c := float64(s.U.Data[i*r+p]) * float64(s.S[p])
			vt := s.Vt.Data[p*n : (p+1)*n]
			for j := range row {
				row[j] -= c * float64(vt[j])
			}
		}
		for _, v := range row {
			sum += v * v
		}
	}
	return sum
}

func hasNaN(x []float32) bool {
	for _, v := range x {
		if v != v {
			return true
		}
	}
	return false
}
