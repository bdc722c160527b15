package linalg

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// symFromSpectrum returns Q·diag(vals)·Qᵀ (n×n) for a random orthogonal Q.
func symFromSpectrum(seed uint64, vals []float64) []float64 {
	n := len(vals)
	q := randOrth64(rand.New(rand.NewPCG(seed, 3)), n, n)
	a := make([]float64, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			s := 0.0
			for k := 0; k < n; k++ {
				s += q[i*n+k] * vals[k] * q[j*n+k]
			}
			a[i*n+j] = s
		}
	}
	for i := 0; i < n; i++ { // exactly symmetric
		for j := i + 1; j < n; j++ {
			a[j*n+i] = a[i*n+j]
		}
	}
	return a
}

// TestSymEigAgainstGonum compares SymEig with gonum's EigenSym (LAPACK
// dsyev) on random symmetric matrices, including clusters, exact zeros and
// negative values: eigenvalues within 1e-12·‖A‖, reconstruction
// zᵀ·diag(vals)·z = A within 1e-12·‖A‖, and orthonormal rows within 1e-13.
func TestSymEigAgainstGonum(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	gauss := func(n int) []float64 {
		a := make([]float64, n*n)
		for i := 0; i < n; i++ {
			for j := i; j < n; j++ {
				a[i*n+j] = rng.NormFloat64()
				a[j*n+i] = a[i*n+j]
			}
		}
		return a
	}
	cluster := make([]float64, 40)
	for i := range cluster {
		cluster[i] = float64(i / 10) // four values, ten times each
	}
	lowRank := make([]float64, 50)
	for i := 0; i < 5; i++ {
		lowRank[i] = float64(5 - i)
	}
	cases := []struct {
		name string
		a    []float64
		n    int
	}{
		{"1x1", []float64{-2.5}, 1},
		{"2x2", []float64{2, 1, 1, 2}, 2},
		{"diagonal", []float64{1, 0, 0, 0, 3, 0, 0, 0, 2}, 3},
		{"zero", make([]float64, 16), 4},
		{"gauss 7", gauss(7), 7},
		{"gauss 150", gauss(150), 150},
		{"clustered 40", symFromSpectrum(1, cluster), 40},
		{"rank 5 of 50", symFromSpectrum(2, lowRank), 50},
		{"graded", symFromSpectrum(3, geometric(60, 0.6)), 60},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.n
			in := slices.Clone(tc.a)
			vals, z, err := SymEig(parallel.Pool{}, tc.a, n)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(in, tc.a) {
				t.Fatal("SymEig modified its input")
			}
			var es mat.EigenSym
			if !es.Factorize(mat.NewSymDense(n, slices.Clone(tc.a)), false) {
				t.Fatal("gonum EigenSym failed")
			}
			want := es.Values(nil)
			slices.Reverse(want) // gonum: ascending
			norm := 0.0
			for _, v := range want {
				norm = math.Max(norm, math.Abs(v))
			}
			scale := math.Max(norm, 1)
			for i := range want {
				if d := math.Abs(vals[i] - want[i]); d > 1e-12*scale {
					t.Errorf("eigenvalue %d: %v, gonum %v", i, vals[i], want[i])
				}
				if i > 0 && vals[i] > vals[i-1] {
					t.Errorf("not descending at %d", i)
				}
			}
			for i := 0; i < n; i++ {
				for j := 0; j < n; j++ {
					rec, dot := 0.0, 0.0
					for k := 0; k < n; k++ {
						rec += z[k*n+i] * vals[k] * z[k*n+j]
						dot += z[i*n+k] * z[j*n+k]
					}
					if math.Abs(rec-tc.a[i*n+j]) > 1e-12*scale {
						t.Fatalf("reconstruction (%d, %d): %v, want %v", i, j, rec, tc.a[i*n+j])
					}
					if i == j {
						dot--
					}
					if math.Abs(dot) > 1e-13 {
						t.Fatalf("rows %d, %d not orthonormal: %v", i, j, dot)
					}
				}
			}
		})
	}
}

// TestSymEigThreadInvariance: the rotations are shared out over columns
// only when a sweep is long; the bits must not depend on it.
func TestSymEigThreadInvariance(t *testing.T) {
	a := symFromSpectrum(5, geometric(300, 0.98))
	var ref []float64
	for _, th := range []int{1, 2, 3} {
		vals, z, err := SymEig(parallel.Pool{Threads: th}, a, 300)
		if err != nil {
			t.Fatal(err)
		}
		got := append(vals, z...)
		if ref == nil {
			ref = got
			continue
		}
		if !slices.Equal(ref, got) {
			t.Fatalf("threads %d: result differs from 1 thread", th)
		}
	}
}

func TestSymEigErrors(t *testing.T) {
	if _, _, err := SymEig(parallel.Pool{}, make([]float64, 3), 2); err == nil {
		t.Error("short input accepted")
	}
	if _, _, err := SymEig(parallel.Pool{}, []float64{1, math.NaN(), math.NaN(), 1}, 2); err == nil {
		t.Error("NaN accepted")
	}
	vals, z, err := SymEig(parallel.Pool{}, nil, 0)
	if err != nil || len(vals) != 0 || len(z) != 0 {
		t.Errorf("empty: %v %v %v", vals, z, err)
	}
}
