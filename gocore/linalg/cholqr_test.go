package linalg

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// withCholQR runs fn with RandomizedSVD's orthonormalisation set to the
// CholeskyQR2 on kern (fast) or to Householder only (!fast).
func withCholQR(kern f64Kern, fast bool, fn func()) {
	k, f := cholKern, cholFast
	cholKern, cholFast = kern, fast
	defer func() { cholKern, cholFast = k, f }()
	fn()
}

// f64Kerns lists the float64 kernel pairs this build and CPU run: the Go
// twins and, where the CPU has AVX-512, the assembly.
func f64Kerns() []f64Kern {
	ks := []f64Kern{goF64Kern}
	if k, ok := asmF64Kern(); ok {
		ks = append(ks, k)
	}
	return ks
}

func randF64(rng *rand.Rand, n int, zeros float64) []float64 {
	x := make([]float64, n)
	for i := range x {
		if rng.Float64() >= zeros {
			x[i] = rng.NormFloat64() * math.Exp2(float64(rng.IntN(20)-10))
		}
	}
	return x
}

// The assembly float64 kernels give their Go twins' bits (each lane one
// math.FMA chain), for lengths around the 8-lane step, zero entries and
// scales spread over 2⁻¹⁰…2⁹, strides above the width.
func TestF64KernelsMatchTwins(t *testing.T) {
	asm, ok := asmF64Kern()
	if !ok {
		t.Skip("no assembly float64 kernels in this build or on this CPU")
	}
	rng := rand.New(rand.NewPCG(15, 7))
	for _, tc := range []struct{ n, ld int }{{0, 8}, {8, 8}, {13, 16}, {64, 72}, {1000, 1024}, {1031, 1040}} {
		x := randF64(rng, 3*tc.ld+max(tc.n, 1), 0.1)
		y := randF64(rng, 3*tc.ld+max(tc.n, 1), 0.1)
		want, got := make([]float64, gramLanes), make([]float64, gramLanes)
		gramGo(tc.n, x, y, tc.ld, want)
		for i := range got {
			got[i] = math.NaN() // must be overwritten
		}
		asm.gram(tc.n, x, y, tc.ld, got)
		for i := range want {
			if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
				t.Fatalf("gram n=%d ld=%d: lane %d = %v, twin %v", tc.n, tc.ld, i, got[i], want[i])
			}
		}
	}
	for _, tc := range []struct{ kk, ldt, ldy, ldo int }{{0, 4, 32, 32}, {1, 4, 32, 32}, {4, 7, 40, 64}, {74, 76, 1024, 1056}, {300, 301, 96, 32}} {
		tm := randF64(rng, 3*tc.ldt+max(tc.kk, 1), 0.2)
		y := randF64(rng, max(tc.kk, 1)*tc.ldy+applyNR, 0.1)
		want, got := make([]float64, 3*tc.ldo+applyNR), make([]float64, 3*tc.ldo+applyNR)
		for i := range got {
			want[i], got[i] = 7, 7 // outside the tile: untouched
		}
		applyGo(tc.kk, tm, tc.ldt, y, tc.ldy, want, tc.ldo)
		asm.apply(tc.kk, tm, tc.ldt, y, tc.ldy, got, tc.ldo)
		for i := range want {
			if math.Float64bits(got[i]) != math.Float64bits(want[i]) {
				t.Fatalf("apply kk=%d: out[%d] = %v, twin %v", tc.kk, i, got[i], want[i])
			}
		}
	}
}

// gradedPanel returns an r×c float32 panel whose rows span a space with
// singular values 1 … 1/cond (geometric), by rows of random orthonormal
// factors.
func gradedPanel(seed uint64, r, c int, cond float64) []float32 {
	s := make([]float64, r)
	for i := range s {
		s[i] = math.Pow(cond, -float64(i)/float64(max(r-1, 1)))
	}
	kn := buildKnown(seed, r, c, s)
	return kn.a.Data
}

// What TestCholQRRows expects of a panel.
const (
	cholRefuse = iota
	cholAccept
	cholEither // an accepted answer is checked all the same
)

// cholCase is one panel of TestCholQRRows.
type cholCase struct {
	name string
	r, c int
	a    []float32
	want int     // cholRefuse, cholAccept or cholEither
	tol  float64 // max |q_i ∓ h_i| against Householder; 0: not compared
}

// The CholeskyQR2 of well- and moderately ill-conditioned panels: rows
// orthonormal to float32 rounding (‖QQᵀ − I‖_max ≤ 1e-6), the row space
// of the panel inside Q's, the same Q as Householder up to the sign of each
// row, the same bits for every kernel pair and thread count, with and
// without the one-pass option of the power iterations. Rank-deficient,
// zero and too ill-conditioned panels are refused (the caller then uses
// Householder), and leave the panel unchanged.
func TestCholQRRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 15))
	gauss := func(r, c int) []float32 {
		x := make([]float32, r*c)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		return x
	}
	deficient := gauss(10, 300)
	copy(deficient[9*300:], deficient[2*300:3*300]) // row 9 = row 2
	zeroRow := gauss(8, 50)
	clear(zeroRow[3*50 : 4*50])
	cases := []cholCase{
		{"gaussian 74x1024", 74, 1024, gauss(74, 1024), cholAccept, 1e-5},
		{"gaussian 5x37", 5, 37, gauss(5, 37), cholAccept, 1e-5},
		{"square 16", 16, 16, gauss(16, 16), cholAccept, 1e-5},
		{"single row", 1, 9, gauss(1, 9), cholAccept, 1e-6},
		{"graded cond 1e3 22x500", 22, 500, gradedPanel(1, 22, 500, 1e3), cholAccept, 1e-5},
		{"graded cond 1e5 30x300", 30, 300, gradedPanel(2, 30, 300, 1e5), cholAccept, 0},
		{"graded cond 1e12 30x300", 30, 300, gradedPanel(3, 30, 300, 1e12), cholEither, 0},
		{"duplicate row", 10, 300, deficient, cholEither, 0},
		{"zero row", 8, 50, zeroRow, cholRefuse, 0},
		{"zero", 6, 40, make([]float32, 240), cholRefuse, 0},
	}
	for _, tc := range cases {
		for _, onePass := range []bool{false, true} {
			name := tc.name
			if onePass {
				name += " one pass allowed"
			}
			t.Run(name, func(t *testing.T) { checkCholQRRows(t, tc, onePass) })
		}
	}
}

// checkCholQRRows runs one case of TestCholQRRows.
func checkCholQRRows(t *testing.T, tc cholCase, onePass bool) {
	var first []float32
	runs := 0
	for _, kern := range f64Kerns() {
		for _, threads := range []int{1, 2, 3} {
			q := slices.Clone(tc.a)
			w := cholQR{kern: kern}
			ok := w.rows(parallel.Pool{Threads: threads}, q, tc.r, tc.c, onePass)
			if (tc.want == cholAccept && !ok) || (tc.want == cholRefuse && ok) {
				t.Fatalf("%s, %d threads: rows = %v, want %v", kern.name, threads, ok, tc.want == cholAccept)
			}
			if runs > 0 && ok != (first != nil) {
				t.Fatalf("%s, %d threads: accepted = %v unlike the first kernel/thread count", kern.name, threads, ok)
			}
			runs++
			if !ok {
				if !slices.Equal(q, tc.a) {
					t.Fatalf("%s: refused panel modified", kern.name)
				}
				continue
			}
			if first == nil {
				first = q
			} else if !bitsEqual32(first, q) {
				t.Fatalf("%s, %d threads: bits differ from the first kernel/thread count", kern.name, threads)
			}
		}
	}
	if first == nil {
		return // refused
	}
	qm := Matrix{Rows: tc.r, Cols: tc.c, Data: first}
	if d := orthoDefect(qm, false); d > 1e-6 {
		t.Errorf("‖QQᵀ − I‖_max = %.3g > 1e-6", d)
	}
	am := Matrix{Rows: tc.r, Cols: tc.c, Data: tc.a}
	norm := 0.0
	for _, v := range tc.a {
		norm = math.Max(norm, math.Abs(float64(v)))
	}
	if d := projectionDefect(am, qm, false); d > 1e-5*norm {
		t.Errorf("row space of the panel not inside Q's: defect %.3g (max |a| %.3g)", d, norm)
	}
	if tc.tol == 0 {
		return
	}
	h := slices.Clone(tc.a)
	var hh householder
	hh.orthoRows(h, tc.r, tc.c)
	for i := 0; i < tc.r; i++ {
		dp, dm := 0.0, 0.0
		for j := 0; j < tc.c; j++ {
			q, hv := float64(first[i*tc.c+j]), float64(h[i*tc.c+j])
			dp, dm = math.Max(dp, math.Abs(q-hv)), math.Max(dm, math.Abs(q+hv))
		}
		if d := math.Min(dp, dm); d > tc.tol {
			t.Errorf("row %d: max |q − (±h)| = %.3g against Householder (> %g)", i, d, tc.tol)
		}
	}
}

func bitsEqual32(x, y []float32) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
			return false
		}
	}
	return true
}

// cholLower and invLower on a hand-checked 3×3 case: G = L·Lᵀ with
// L = [[2,0,0],[1,3,0],[−1,2,1]], and the refusal of an indefinite G.
func TestCholLowerInvLower(t *testing.T) {
	const ld = 4
	want := []float64{2, 0, 0, 0, 1, 3, 0, 0, -1, 2, 1, 0, 0, 0, 0, 0}
	g := make([]float64, ld*ld)
	for i := 0; i < 3; i++ {
		for j := 0; j < 3; j++ {
			for p := 0; p < 3; p++ {
				g[i*ld+j] += want[i*ld+p] * want[j*ld+p]
			}
		}
	}
	l := make([]float64, ld*ld)
	if !cholLower(g, 3, ld, l, 1e-14) {
		t.Fatal("cholLower refused a positive definite matrix")
	}
	for i := range want {
		if math.Abs(l[i]-want[i]) > 1e-15 {
			t.Fatalf("L = %v, want %v", l, want)
		}
	}
	inv := make([]float64, ld*ld)
	invLower(l, 3, ld, inv)
	for i := 0; i < 3; i++ {
		for j := 0; j < 3; j++ {
			s := 0.0
			for p := 0; p < 3; p++ {
				s += l[i*ld+p] * inv[p*ld+j]
			}
			if i == j {
				s--
			}
			if math.Abs(s) > 1e-15 {
				t.Fatalf("L·L⁻¹ − I has %g at (%d, %d)", s, i, j)
			}
		}
	}
	g[2*ld+2] = 0.5 // now indefinite (the last pivot would be 0.5 − 5 < 0)
	if cholLower(g, 3, ld, l, 1e-14) {
		t.Error("cholLower accepted an indefinite matrix")
	}
}

// RandomizedSVD's accuracy and robustness tests with each
// orthonormalisation: Householder only, and the CholeskyQR2 on each
// kernel pair (the Go twins exercise its code on every CPU).
func TestRandomizedSVDOrthonormalisations(t *testing.T) {
	type setting struct {
		name string
		kern f64Kern
		fast bool
	}
	settings := []setting{{"householder", goF64Kern, false}}
	for _, k := range f64Kerns() {
		settings = append(settings, setting{"cholqr2-" + k.name, k, true})
	}
	for _, s := range settings {
		t.Run(s.name, func(t *testing.T) {
			withCholQR(s.kern, s.fast, func() {
				t.Run("KnownSpectra", TestRandomizedSVDKnownSpectra)
				t.Run("PowerIterationsConverge", TestRandomizedSVDPowerIterationsConverge)
				t.Run("ZeroMatrix", TestRandomizedSVDZeroMatrix)
				t.Run("RankDeficient", TestRandomizedSVDRankDeficient)
				t.Run("ReconstructExactRank", TestRandomizedSVDReconstructExactRank)
			})
		})
	}
}

// With the CholeskyQR2, RandomizedSVD gives the same bits for 1 and 2
// threads and for the assembly kernels and their Go twins.
func TestRandomizedSVDCholQRBits(t *testing.T) {
	kn := buildKnown(31, 333, 270, geometric(270, 0.97))
	opt := Options{Rank: 20, Seed: 9}
	var ref SVD
	for i, k := range f64Kerns() {
		for _, threads := range []int{1, 2} {
			var got SVD
			var err error
			withCholQR(k, true, func() {
				prev := runtime.GOMAXPROCS(threads)
				defer runtime.GOMAXPROCS(prev)
				o := opt
				o.Pool = parallel.Pool{Threads: threads}
				got, err = RandomizedSVD(kn.a, o)
			})
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 && threads == 1 {
				ref = got
				continue
			}
			if !bitsEqual32(ref.U.Data, got.U.Data) || !bitsEqual32(ref.S, got.S) || !bitsEqual32(ref.Vt.Data, got.Vt.Data) {
				t.Errorf("%s, %d threads: result differs bitwise from go, 1 thread", k.name, threads)
			}
		}
	}
}

// The non-finite check that looks at Y = A·Ω instead of A still names the
// first non-finite entry of A, wherever it is.
func TestRandomizedSVDNonFiniteAnywhere(t *testing.T) {
	for _, pos := range []int{0, 37, 64*50 - 1} {
		for _, v := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			a := uniformMatrix(4, 64, 50)
			a.Data[pos] = v
			_, err := RandomizedSVD(a, Options{Rank: 3, Seed: 1})
			if err == nil {
				t.Fatalf("%v at %d: no error", v, pos)
			}
			if at := fmt.Sprintf("at (%d, %d)", pos/50, pos%50); !strings.Contains(err.Error(), at) {
				t.Errorf("%v at %d: error %q does not name %s", v, pos, err, at)
			}
		}
	}
}
