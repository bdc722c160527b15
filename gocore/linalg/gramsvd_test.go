package linalg

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// TestGramExact: the Gram matrix equals the naive float64 sums (the same
// order of summation), on both sides.
func TestGramExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, sh := range [][2]int{{37, 20}, {20, 37}, {5, 5}, {1, 9}} {
		m, n := sh[0], sh[1]
		a := NewMatrix(m, n)
		for i := range a.Data {
			a.Data[i] = float32(rng.NormFloat64())
		}
		a.Data[3] = 0 // a zero entry takes the skip path
		g, err := Gram(parallel.Pool{}, a)
		if err != nil {
			t.Fatal(err)
		}
		r := min(m, n)
		for i := 0; i < r; i++ {
			for j := 0; j < r; j++ {
				s := 0.0
				if m >= n {
					for k := 0; k < m; k++ {
						s += float64(a.At(k, i)) * float64(a.At(k, j))
					}
				} else {
					for k := 0; k < n; k++ {
						s += float64(a.At(i, k)) * float64(a.At(j, k))
					}
				}
				if g[i*r+j] != s {
					t.Fatalf("%dx%d: G[%d][%d] = %v, want %v", m, n, i, j, g[i*r+j], s)
				}
			}
		}
	}
}

// TestGramSVDKnown checks GramSVD against matrices with a known SVD:
// singular values to 1e-5 relative (float32 input), singular vectors
// aligned to 1e-4 where the spectrum has gaps, U and Vt orthonormal to
// 1e-5, and a rank-deficient input returning zero pairs past its rank.
func TestGramSVDKnown(t *testing.T) {
	cases := []struct {
		name string
		m, n int
		s    []float64
		k    int
		rank int // numerical rank (len(s) when all are kept)
	}{
		{"tall 120x40 geometric", 120, 40, geometric(40, 0.85), 12, 40},
		{"wide 30x90 geometric", 30, 90, geometric(30, 0.8), 30, 30},
		{"square 64 all", 64, 64, geometric(64, 0.9), 64, 64},
		{"rank 5 of 50x40", 50, 40, append(geometric(5, 0.5), make([]float64, 35)...), 8, 5},
		{"k above min dim", 20, 10, geometric(10, 0.7), 50, 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kn := buildKnown(uint64(tc.m*tc.n), tc.m, tc.n, tc.s)
			got, err := GramSVD(parallel.Pool{}, kn.a, tc.k)
			if err != nil {
				t.Fatal(err)
			}
			k := min(tc.k, tc.m, tc.n)
			if len(got.S) != k || got.U.Rows != tc.m || got.U.Cols != k || got.Vt.Rows != k || got.Vt.Cols != tc.n {
				t.Fatalf("shapes: %d, U %dx%d, Vt %dx%d", len(got.S), got.U.Rows, got.U.Cols, got.Vt.Rows, got.Vt.Cols)
			}
			r := len(kn.s)
			for i := 0; i < k; i++ {
				if i >= tc.rank {
					if got.S[i] != 0 {
						t.Errorf("S[%d] = %v past the rank", i, got.S[i])
					}
					for p := 0; p < tc.m; p++ {
						if got.U.Data[p*k+i] != 0 {
							t.Fatalf("U column %d past the rank is not zero", i)
						}
					}
					continue
				}
				if d := math.Abs(float64(got.S[i])-kn.s[i]) / kn.s[i]; d > 1e-5 {
					t.Errorf("S[%d] = %v, want %v (rel %.2g)", i, got.S[i], kn.s[i], d)
				}
				// |⟨u_i, q1_i⟩| and |⟨v_i, q2_i⟩| ≈ 1 (the spectrum has gaps).
				du, dv := 0.0, 0.0
				for p := 0; p < tc.m; p++ {
					du += float64(got.U.Data[p*k+i]) * kn.q1[p*r+i]
				}
				for p := 0; p < tc.n; p++ {
					dv += float64(got.Vt.Data[i*tc.n+p]) * kn.q2[p*r+i]
				}
				if 1-math.Abs(du) > 1e-4 || 1-math.Abs(dv) > 1e-4 || du*dv < 0 {
					t.Errorf("pair %d misaligned: ⟨u⟩ %v, ⟨v⟩ %v", i, du, dv)
				}
			}
			kr := min(k, tc.rank)
			u := Matrix{Rows: tc.m, Cols: kr, Data: make([]float32, tc.m*kr)}
			for p := 0; p < tc.m; p++ {
				copy(u.Data[p*kr:(p+1)*kr], got.U.Data[p*k:p*k+kr])
			}
			vt := Matrix{Rows: kr, Cols: tc.n, Data: got.Vt.Data[:kr*tc.n]}
			if d := orthoDefect(u, true); d > 1e-5 {
				t.Errorf("U columns not orthonormal: %g", d)
			}
			if d := orthoDefect(vt, false); d > 1e-5 {
				t.Errorf("Vt rows not orthonormal: %g", d)
			}
		})
	}
}

// polarOf returns Σ_{i<rank} q1_i·q2_iᵀ, the exact polar factor of a known
// matrix of that rank.
func polarOf(kn known, m, n, rank int) []float64 {
	r := len(kn.s)
	p := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			s := 0.0
			for q := 0; q < rank; q++ {
				s += kn.q1[i*r+q] * kn.q2[j*r+q]
			}
			p[i*n+j] = s
		}
	}
	return p
}

// TestPolarKnown compares Polar with the exact polar factor Q1·Q2ᵀ of
// matrices built as Q1·diag(s)·Q2ᵀ: entries within 2e-6·κ (κ = σ₁/σ_r of
// the kept part; the float32 products limit a direction to ε₃₂·κ), the
// returned singular values within 1e-5 relative, and for a rank-deficient
// input the partial isometry over its range.
func TestPolarKnown(t *testing.T) {
	cases := []struct {
		name string
		m, n int
		s    []float64
		rank int
	}{
		{"tall 90x30", 90, 30, geometric(30, 0.9), 30},
		{"wide 25x70", 25, 70, geometric(25, 0.8), 25},
		{"square 48", 48, 48, geometric(48, 0.93), 48},
		{"rank 4 of 40x30", 40, 30, append([]float64{3, 2, 1, 0.5}, make([]float64, 26)...), 4},
		{"rank 1", 12, 9, append([]float64{2}, make([]float64, 8)...), 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kn := buildKnown(uint64(tc.m+7*tc.n), tc.m, tc.n, tc.s)
			p, sv, err := Polar(parallel.Pool{}, kn.a)
			if err != nil {
				t.Fatal(err)
			}
			if p.Rows != tc.m || p.Cols != tc.n || len(sv) != min(tc.m, tc.n) {
				t.Fatalf("shapes %dx%d, %d values", p.Rows, p.Cols, len(sv))
			}
			for i := 0; i < tc.rank; i++ {
				if d := math.Abs(sv[i]-tc.s[i]) / tc.s[i]; d > 1e-5 {
					t.Errorf("σ[%d] = %v, want %v", i, sv[i], tc.s[i])
				}
			}
			kappa := tc.s[0] / tc.s[tc.rank-1]
			want := polarOf(kn, tc.m, tc.n, tc.rank)
			worst := 0.0
			for i, w := range want {
				worst = math.Max(worst, math.Abs(float64(p.Data[i])-w))
			}
			if worst > 2e-6*kappa {
				t.Errorf("max |P − Q1·Q2ᵀ| = %.3g > %.3g", worst, 2e-6*kappa)
			}
		})
	}
}

func TestPolarZeroAndErrors(t *testing.T) {
	p, sv, err := Polar(parallel.Pool{}, NewMatrix(4, 3))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range p.Data {
		if v != 0 {
			t.Fatal("polar factor of the zero matrix is not zero")
		}
	}
	if !slices.Equal(sv, []float64{0, 0, 0}) {
		t.Fatalf("singular values %v", sv)
	}
	bad := NewMatrix(2, 2)
	bad.Data[1] = float32(math.Inf(1))
	if _, _, err := Polar(parallel.Pool{}, bad); err == nil {
		t.Error("Inf accepted")
	}
	if _, err := GramSVD(parallel.Pool{}, bad, 1); err == nil {
		t.Error("Inf accepted by GramSVD")
	}
	if _, err := GramSVD(parallel.Pool{}, Matrix{Rows: 2, Cols: 2}, 1); err == nil {
		t.Error("bad shape accepted")
	}
	s, err := GramSVD(parallel.Pool{}, NewMatrix(3, 5), 2)
	if err != nil || s.S[0] != 0 || s.S[1] != 0 {
		t.Errorf("zero matrix: %v %v", s.S, err)
	}
}

// TestGramSVDPolarThreadInvariance: the bits do not depend on the thread
// count (the GEMM, the Gram matrix and the rotations split work by fixed
// blocks).
func TestGramSVDPolarThreadInvariance(t *testing.T) {
	kn := buildKnown(9, 300, 140, geometric(140, 0.97))
	var refP, refU []float32
	for _, th := range []int{1, 2, 4} {
		p, _, err := Polar(parallel.Pool{Threads: th}, kn.a)
		if err != nil {
			t.Fatal(err)
		}
		s, err := GramSVD(parallel.Pool{Threads: th}, kn.a, 40)
		if err != nil {
			t.Fatal(err)
		}
		u := append(slices.Clone(s.U.Data), s.Vt.Data...)
		if refP == nil {
			refP, refU = p.Data, u
			continue
		}
		if !slices.Equal(refP, p.Data) || !slices.Equal(refU, u) {
			t.Fatalf("threads %d: results differ from 1 thread", th)
		}
	}
}

// TestPolarIsolatedSmallSingularValue: one singular value far below the
// others (σ₁/σ_r = 10⁵, the rest within a factor 3) leaves the polar factor
// well conditioned (its condition is 2/(σ_r + σ_{r−1})), and Polar keeps
// it accurate: within 2e-6 of the float64 SVD of the same float32 matrix,
// where a float32 product a·W would be off by about ε₃₂·σ₁/σ_r ≈ 1e-2.
func TestPolarIsolatedSmallSingularValue(t *testing.T) {
	s := geometric(40, 0.97)
	s[39] = 1e-5
	for _, sh := range [][2]int{{60, 40}, {40, 60}, {40, 40}} {
		m, n := sh[0], sh[1]
		kn := buildKnown(17, m, n, s)
		p, _, err := Polar(parallel.Pool{}, kn.a)
		if err != nil {
			t.Fatal(err)
		}
		a64 := make([]float64, m*n)
		to64(a64, kn.a.Data)
		var svd mat.SVD
		if !svd.Factorize(mat.NewDense(m, n, a64), mat.SVDThin) {
			t.Fatal("gonum SVD failed")
		}
		var u, v, want mat.Dense
		svd.UTo(&u)
		svd.VTo(&v)
		want.Mul(&u, v.T())
		worst := 0.0
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				worst = math.Max(worst, math.Abs(float64(p.At(i, j))-want.At(i, j)))
			}
		}
		if worst > 2e-6 {
			t.Errorf("%dx%d: max |P − U·Vᵀ| = %.3g", m, n, worst)
		}
	}
}
