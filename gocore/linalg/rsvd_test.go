package linalg

import (
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

func harmonic(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = 1 / float64(i+1)
	}
	return s
}

// TestRandomizedSVDKnownSpectra checks singular values, Eckart–Young
// optimality of the rank-k residual, orthonormality and (when the spectrum
// has gaps) singular-vector alignment against matrices whose SVD is known by
// construction.
func TestRandomizedSVDKnownSpectra(t *testing.T) {
	cases := []struct {
		name   string
		m, n   int
		s      []float64
		opt    Options
		relS   float64 // max relative error of each of the top-k σ
		ey     float64 // residual² <= (1+ey)·Σ_{i>k} σ_i² + float32 noise
		vecTol float64 // 1 − |⟨u_j, u*_j⟩| and same for v; 0 = not checked
	}{
		{"tall 200x120 geometric 0.8", 200, 120, geometric(120, 0.8), Options{Rank: 10, Seed: 1}, 1e-3, 1e-3, 1e-3},
		{"wide 64x300 flat-then-drop", 64, 300, flatDrop(64, 20, 1e-3), Options{Rank: 20, Seed: 2}, 1e-3, 1e-3, 0},
		// Slow decay (σ_{k+p}/σ_k = 0.95^p): the defaults give ~1e-3 here, p = 20 gives ~1e-5.
		{"square 512 geometric 0.95 p=20", 512, 512, geometric(512, 0.95), Options{Rank: 32, Oversample: 20, Seed: 3}, 1e-3, 1e-3, 1e-2},
		{"square 512 flat-then-drop", 512, 512, flatDrop(512, 40, 0.05), Options{Rank: 40, Seed: 4}, 1e-3, 1e-3, 0},
		{"tall 300x200 harmonic q=4", 300, 200, harmonic(200), Options{Rank: 10, PowerIters: 4, Seed: 5}, 1e-3, 5e-2, 0},
		{"wide 120x200 wide range 0.5", 120, 200, geometric(120, 0.5), Options{Rank: 12, Seed: 6}, 1e-3, 1e-3, 1e-3},
		{"rank > min dims 30x20", 30, 20, geometric(20, 0.7), Options{Rank: 50, Seed: 7}, 1e-4, 0, 1e-4},
		{"no oversampling, no power iters, exact rank", 80, 60, append(geometric(8, 0.5), make([]float64, 52)...), Options{Rank: 8, Oversample: -1, PowerIters: -1, Seed: 8}, 1e-4, 0, 1e-4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kn := buildKnown(uint64(len(tc.name)), tc.m, tc.n, tc.s)
			got, err := RandomizedSVD(kn.a, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			k := min(tc.opt.Rank, tc.m, tc.n)
			if len(got.S) != k || got.U.Rows != tc.m || got.U.Cols != k || got.Vt.Rows != k || got.Vt.Cols != tc.n {
				t.Fatalf("shapes: len(S)=%d U %d×%d Vt %d×%d, want k=%d", len(got.S), got.U.Rows, got.U.Cols, got.Vt.Rows, got.Vt.Cols, k)
			}
			for i := 0; i < k; i++ {
				if i > 0 && got.S[i] > got.S[i-1] {
					t.Errorf("S not descending at %d: %v > %v", i, got.S[i], got.S[i-1])
				}
				want := 0.0
				if i < len(kn.s) {
					want = kn.s[i]
				}
				if want == 0 {
					if float64(got.S[i]) > 1e-5*kn.s[0] {
						t.Errorf("σ_%d = %g, want ~0", i, got.S[i])
					}
					continue
				}
				if rel := math.Abs(float64(got.S[i])-want) / want; rel > tc.relS {
					t.Errorf("σ_%d = %.7g, want %.7g (rel err %.2g > %.2g)", i, got.S[i], want, rel, tc.relS)
				}
			}
			if d := orthoDefect(got.U, true); d > 1e-4 {
				t.Errorf("‖UᵀU − I‖_max = %.2g", d)
			}
			if d := orthoDefect(got.Vt, false); d > 1e-4 {
				t.Errorf("‖VᵀV − I‖_max = %.2g", d)
			}
			tail, total := 0.0, 0.0
			for i, v := range kn.s {
				total += v * v
				if i >= k {
					tail += v * v
				}
			}
			noise := 1e-10 * total // float32 rounding of A and of the factors
			res := residual2(t, kn.a, got)
			if res > (1+tc.ey)*tail+noise {
				t.Errorf("‖A − A_k‖_F² = %.6g, optimum %.6g (allowed factor 1+%g)", res, tail, tc.ey)
			}
			if res < (1-1e-3)*tail-noise {
				t.Errorf("‖A − A_k‖_F² = %.6g below the Eckart–Young optimum %.6g", res, tail)
			}
			if tc.vecTol > 0 {
				r := len(kn.s)
				for j := 0; j < k && kn.s[j] > 0; j++ {
					du, dv := 0.0, 0.0
					for i := 0; i < tc.m; i++ {
						du += float64(got.U.Data[i*k+j]) * kn.q1[i*r+j]
					}
					for i := 0; i < tc.n; i++ {
						dv += float64(got.Vt.Data[j*tc.n+i]) * kn.q2[i*r+j]
					}
					if 1-math.Abs(du) > tc.vecTol || 1-math.Abs(dv) > tc.vecTol {
						t.Errorf("pair %d: |⟨u,u*⟩| = %.6f, |⟨v,v*⟩| = %.6f", j, math.Abs(du), math.Abs(dv))
					}
					if du*dv < 0 {
						t.Errorf("pair %d: u and v signs inconsistent", j)
					}
				}
			}
		})
	}
}

// TestRandomizedSVDPowerIterationsConverge checks that the subspace
// iterations are applied: on a slowly decaying spectrum the worst relative
// error of the top-k singular values must shrink as q grows (Halko et al.
// 2011, §4.5: the effective gap is raised to the power 2q+1).
func TestRandomizedSVDPowerIterationsConverge(t *testing.T) {
	kn := buildKnown(21, 256, 256, geometric(256, 0.93))
	prev := math.Inf(1)
	for _, q := range []int{-1, 1, 2, 4} {
		got, err := RandomizedSVD(kn.a, Options{Rank: 24, PowerIters: q, Seed: 5})
		if err != nil {
			t.Fatal(err)
		}
		worst := 0.0
		for i, v := range got.S {
			worst = math.Max(worst, math.Abs(float64(v)-kn.s[i])/kn.s[i])
		}
		if worst >= prev {
			t.Errorf("q=%d: worst relative σ error %.3g did not improve on %.3g", q, worst, prev)
		}
		prev = worst
	}
	if prev > 1e-4 {
		t.Errorf("q=4: worst relative σ error %.3g > 1e-4", prev)
	}
}

// TestRandomizedSVDReconstructExactRank checks Reconstruct on an exactly
// low-rank matrix, whose rank-k reconstruction must return A itself.
func TestRandomizedSVDReconstructExactRank(t *testing.T) {
	kn := buildKnown(11, 90, 70, []float64{3, 2, 1, 0.5, 0.25})
	got, err := RandomizedSVD(kn.a, Options{Rank: 5, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]float32, 90*70)
	for i := range dst {
		dst[i] = float32(math.NaN()) // must be ignored
	}
	if err := got.Reconstruct(parallel.Pool{}, dst); err != nil {
		t.Fatal(err)
	}
	worst := 0.0
	for i, v := range dst {
		worst = math.Max(worst, math.Abs(float64(v-kn.a.Data[i])))
	}
	if worst > 1e-5 {
		t.Errorf("max |A − USVᵀ| = %.3g", worst)
	}
	if err := got.Reconstruct(parallel.Pool{}, make([]float32, 10)); !errors.Is(err, errShape) {
		t.Errorf("Reconstruct into a short slice: err = %v", err)
	}
}

func TestRandomizedSVDDeterminism(t *testing.T) {
	kn := buildKnown(12, 300, 260, geometric(260, 0.97))
	opt := Options{Rank: 20, Seed: 42}
	first, err := RandomizedSVD(kn.a, opt)
	if err != nil {
		t.Fatal(err)
	}
	prev := runtime.GOMAXPROCS(1)
	single, err := RandomizedSVD(kn.a, opt)
	runtime.GOMAXPROCS(prev)
	if err != nil {
		t.Fatal(err)
	}
	again, err := RandomizedSVD(kn.a, opt)
	if err != nil {
		t.Fatal(err)
	}
	same := func(x, y []float32) bool {
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
	for name, other := range map[string]SVD{"GOMAXPROCS=1": single, "repeat": again} {
		if !same(first.U.Data, other.U.Data) || !same(first.S, other.S) || !same(first.Vt.Data, other.Vt.Data) {
			t.Errorf("%s: results differ bitwise for the same seed", name)
		}
	}
	opt.Seed = 43
	other, err := RandomizedSVD(kn.a, opt)
	if err != nil {
		t.Fatal(err)
	}
	if same(first.U.Data, other.U.Data) && same(first.Vt.Data, other.Vt.Data) {
		t.Error("seeds 42 and 43 gave bit-identical factors: the seed is not used")
	}
}

func TestRandomizedSVDZeroMatrix(t *testing.T) {
	for _, sh := range [][2]int{{40, 25}, {25, 40}, {7, 7}} {
		a := NewMatrix(sh[0], sh[1])
		got, err := RandomizedSVD(a, Options{Rank: 5, Seed: 1})
		if err != nil {
			t.Fatalf("%v: %v", sh, err)
		}
		if hasNaN(got.U.Data) || hasNaN(got.Vt.Data) || hasNaN(got.S) {
			t.Fatalf("%v: NaN in result", sh)
		}
		for i, v := range got.S {
			if v != 0 {
				t.Errorf("%v: σ_%d = %g, want 0", sh, i, v)
			}
		}
		if d := orthoDefect(got.U, true); d > 1e-5 {
			t.Errorf("%v: ‖UᵀU − I‖ = %g", sh, d)
		}
		if d := orthoDefect(got.Vt, false); d > 1e-5 {
			t.Errorf("%v: ‖VᵀV − I‖ = %g", sh, d)
		}
	}
}

// TestRandomizedSVDRankDeficient uses a rank-3 matrix with duplicated and
// zero columns and asks for more components than its rank.
func TestRandomizedSVDRankDeficient(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	const m, n = 50, 40
	a := NewMatrix(m, n)
	for j := 0; j < 3; j++ { // three random columns ...
		for i := 0; i < m; i++ {
			a.Data[i*n+j] = float32(rng.NormFloat64())
		}
	}
	for j := 3; j < 30; j++ { // ... copied (scaled) into 27 more; 10 zero columns
		for i := 0; i < m; i++ {
			a.Data[i*n+j] = float32(j) * a.Data[i*n+j%3]
		}
	}
	got, err := RandomizedSVD(a, Options{Rank: 8, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	if hasNaN(got.U.Data) || hasNaN(got.Vt.Data) || hasNaN(got.S) {
		t.Fatal("NaN in result")
	}
	for i := 3; i < 8; i++ {
		if got.S[i] > 1e-5*got.S[0] {
			t.Errorf("σ_%d = %g, want ~0 (σ_0 = %g)", i, got.S[i], got.S[0])
		}
	}
	if got.S[2] < 1e-2*got.S[0] {
		t.Errorf("σ_2 = %g unexpectedly small", got.S[2])
	}
	if d := orthoDefect(got.U, true); d > 1e-4 {
		t.Errorf("‖UᵀU − I‖ = %g", d)
	}
	if d := orthoDefect(got.Vt, false); d > 1e-4 {
		t.Errorf("‖VᵀV − I‖ = %g", d)
	}
	total := 0.0
	for _, v := range a.Data {
		total += float64(v) * float64(v)
	}
	if res := residual2(t, a, got); res > 1e-10*total {
		t.Errorf("rank-3 matrix not reproduced: residual² %g of %g", res, total)
	}
}

func TestRandomizedSVDErrors(t *testing.T) {
	nan := NewMatrix(3, 3)
	nan.Data[4] = float32(math.NaN())
	inf := NewMatrix(2, 3)
	inf.Data[5] = float32(math.Inf(-1))
	tall := NewMatrix(5, 2) // sketched through Aᵀ
	tall.Data[7] = float32(math.Inf(1))
	cases := []struct {
		name  string
		a     Matrix
		rank  int
		shape bool // error must wrap errShape
	}{
		{"short data", Matrix{Rows: 3, Cols: 3, Data: make([]float32, 8)}, 1, true},
		{"negative dim", Matrix{Rows: -1, Cols: 3}, 1, true},
		{"empty", NewMatrix(0, 5), 1, true},
		{"rank 0", NewMatrix(4, 4), 0, true},
		{"NaN", nan, 1, false},
		{"-Inf", inf, 1, false},
		{"+Inf, tall", tall, 1, false},
	}
	for _, tc := range cases {
		_, err := RandomizedSVD(tc.a, Options{Rank: tc.rank})
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if tc.shape != errors.Is(err, errShape) {
			t.Errorf("%s: errors.Is(err, errShape) = %v, err = %v", tc.name, !tc.shape, err)
		}
		if tc.name == "+Inf, tall" && !strings.Contains(err.Error(), "at (3, 1)") {
			t.Errorf("%s: %v does not name the entry (3, 1)", tc.name, err)
		}
	}
}

func TestOptionsResolved(t *testing.T) {
	cases := []struct {
		opt     Options
		m, n    int
		k, l, q int
	}{
		{Options{Rank: 5}, 100, 80, 5, 15, 2},
		{Options{Rank: 5, Oversample: 3, PowerIters: 1}, 100, 80, 5, 8, 1},
		{Options{Rank: 5, Oversample: -1, PowerIters: -1}, 100, 80, 5, 5, 0},
		{Options{Rank: 75}, 100, 80, 75, 80, 2},
		{Options{Rank: 200}, 30, 100, 30, 30, 2},
	}
	for _, tc := range cases {
		k, l, q := tc.opt.resolved(tc.m, tc.n)
		if k != tc.k || l != tc.l || q != tc.q {
			t.Errorf("%+v on %d×%d: (k,l,q) = (%d,%d,%d), want (%d,%d,%d)", tc.opt, tc.m, tc.n, k, l, q, tc.k, tc.l, tc.q)
		}
	}
}

// FuzzRandomizedSVD feeds arbitrary small matrices (shape and entries from
// the fuzz input) and checks the invariants: no error, no NaN, descending
// non-negative S, orthonormal factors, σ_0 ≤ ‖A‖_F and residual ≤ ‖A‖_F².
func FuzzRandomizedSVD(f *testing.F) {
	f.Add(uint8(3), uint8(4), uint8(2), uint64(1), []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add(uint8(1), uint8(1), uint8(1), uint64(0), []byte{0})
	f.Add(uint8(9), uint8(2), uint8(9), uint64(5), []byte{255, 0, 128})
	f.Fuzz(func(t *testing.T, rows, cols, rank uint8, seed uint64, data []byte) {
		m, n := int(rows%24)+1, int(cols%24)+1
		a := NewMatrix(m, n)
		for i := range a.Data {
			if len(data) > 0 {
				a.Data[i] = float32(int(data[i%len(data)])-128) / 16
			}
		}
		got, err := RandomizedSVD(a, Options{Rank: int(rank%30) + 1, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		if hasNaN(got.U.Data) || hasNaN(got.Vt.Data) || hasNaN(got.S) {
			t.Fatal("NaN in result")
		}
		total := 0.0
		for _, v := range a.Data {
			total += float64(v) * float64(v)
		}
		for i, v := range got.S {
			if v < 0 || (i > 0 && v > got.S[i-1]) {
				t.Fatalf("S = %v not descending non-negative", got.S)
			}
		}
		if float64(got.S[0]) > math.Sqrt(total)*(1+1e-5)+1e-6 {
			t.Fatalf("σ_0 = %g > ‖A‖_F = %g", got.S[0], math.Sqrt(total))
		}
		if d := orthoDefect(got.U, true); d > 1e-4 {
			t.Fatalf("‖UᵀU − I‖ = %g", d)
		}
		if d := orthoDefect(got.Vt, false); d > 1e-4 {
			t.Fatalf("‖VᵀV − I‖ = %g", d)
		}
		if res := residual2(t, a, got); res > total*(1+1e-4)+1e-6 {
			t.Fatalf("residual² %g > ‖A‖_F² %g", res, total)
		}
	})
}
