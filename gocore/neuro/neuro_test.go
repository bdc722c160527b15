package neuro

import (
	"math"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/mat"
)

func TestTIES(t *testing.T) {
	cases := []struct {
		name string
		x    []float64
		w    []float32
		want float64
	}{
		{"single", []float64{-2.5}, []float32{1}, -2.5},
		{"mean of agreeing", []float64{1, 3, -1}, []float32{1, 1, 1}, 2},
		{"zeros do not count", []float64{2, 0, 0}, []float32{1, 1, 1}, 2},
		{"negative elected", []float64{-4, 1, -2}, []float32{1, 1, 1}, -3},
		{"weighted", []float64{1, 3}, []float32{3, 1}, 1.5}, // (3·1 + 1·3)/(3 + 1)
		{"tie elects nothing", []float64{1, -1}, []float32{1, 1}, 0},
		{"near tie elects nothing", []float64{1, -1 + 1e-12}, []float32{1, 1}, 0},
		{"all zero", []float64{0, 0}, []float32{1, 1}, 0},
	}
	for _, tc := range cases {
		if got := TIES(tc.x, tc.w); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestRowHandComputed(t *testing.T) {
	cases := []struct {
		name       string
		w          []float32
		taus       [][]float32
		lam1, lam2 float64
		want       []float32
	}{
		// s = (2, 0) → s̄ = 2, Δ∥ = [2 0 0]; o1 = [0 1 0], o2 = [0 0 3] are
		// orthogonal: each is its own coordinate, Δ⊥ = [0 1 3].
		{"orthogonal parts", []float32{1, 0, 0}, [][]float32{{2, 1, 0}, {0, 0, 3}}, 1, 1, []float32{3, 1, 3}},
		{"lam1 0", []float32{1, 0, 0}, [][]float32{{2, 1, 0}, {0, 0, 3}}, 0, 2, []float32{1, 2, 6}},
		// o1 = [0 1], o2 = [0 1] with s = (1, −1): the parallel parts cancel
		// (s̄ = 0), the orthogonal ones agree: Δ⊥ = [0 1].
		{"parallel conflict", []float32{1, 0}, [][]float32{{1, 1}, {-1, 1}}, 1, 1, []float32{1, 1}},
		// o1 = [0 1 0] and o2 = −o1: the one coordinate is (1, −1): no sign.
		{"orthogonal conflict", []float32{1, 0, 0}, [][]float32{{0, 1, 0}, {0, -1, 0}}, 1, 1, []float32{1, 0, 0}},
		// A zero pre-trained row: no split, o_t = τ̂_t, here orthogonal.
		{"zero row", []float32{0, 0}, [][]float32{{1, 0}, {0, 2}}, 1, 1, []float32{1, 2}},
		{"T = 1", []float32{3, 4}, [][]float32{{1, -2}}, 1, 1, []float32{4, 2}},
	}
	for _, tc := range cases {
		k := NewKernel(len(tc.taus))
		out := make([]float32, len(tc.w))
		wts := make([]float32, len(tc.taus))
		for i := range wts {
			wts[i] = 1
		}
		k.Row(tc.w, tc.taus, wts, tc.lam1, tc.lam2, out)
		for j := range out {
			if math.Abs(float64(out[j]-tc.want[j])) > 1e-6 {
				t.Errorf("%s: got %v, want %v", tc.name, out, tc.want)
				break
			}
		}
	}
}

// bruteRow is NeuroMerging of one neuron by the definition: the orthogonal
// parts' explicit SVD (gonum, float64), coordinates C = O·V (those below
// CoordFloor·S_j count as zero), TIES per coordinate, Δ⊥ = V·c̄.
func bruteRow(w []float64, taus [][]float64, wts []float32, lam1, lam2 float64) []float64 {
	T, n := len(taus), len(w)
	var ww float64
	for _, x := range w {
		ww += x * x
	}
	s := make([]float64, T)
	O := mat.NewDense(T, n, nil)
	for t, tau := range taus {
		if math.Sqrt(ww) >= ZeroNorm {
			for j := range w {
				s[t] += tau[j] * w[j]
			}
			s[t] /= ww
		}
		for j := range w {
			O.Set(t, j, tau[j]-s[t]*w[j])
		}
	}
	var svd mat.SVD
	if !svd.Factorize(O, mat.SVDThin) {
		panic("svd")
	}
	var V mat.Dense
	svd.VTo(&V) // n × r
	sv := svd.Values(nil)
	var C mat.Dense
	C.Mul(O, &V) // T × r
	_, r := C.Dims()
	perp := make([]float64, n)
	col := make([]float64, T)
	for j := range r {
		for t := range T {
			col[t] = C.At(t, j)
			if math.Abs(col[t]) <= CoordFloor*sv[j] {
				col[t] = 0
			}
		}
		c := TIES(col, wts)
		for i := range n {
			perp[i] += c * V.At(i, j)
		}
	}
	sbar := TIES(s, wts)
	out := make([]float64, n)
	for i := range out {
		out[i] = w[i] + lam1*sbar*w[i] + lam2*perp[i]
	}
	return out
}

func randRow(r *rand.Rand, n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(scale * r.NormFloat64())
	}
	return x
}

func widen(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

func TestRowMatchesExplicitSVD(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, T := range []int{1, 2, 3, 5} {
		for _, n := range []int{1, 2, 7, 300} {
			w := randRow(r, n, 1)
			taus := make([][]float32, T)
			wts := make([]float32, T)
			for t := range taus {
				taus[t] = randRow(r, n, 0.05)
				wts[t] = float32(0.5 + r.Float64())
			}
			if T > 2 && n > 2 {
				clear(taus[1]) // a neuron the trim emptied for one task
			}
			k := NewKernel(T)
			out := make([]float32, n)
			k.Row(w, taus, wts, 0.7, 1.3, out)
			tw := make([][]float64, T)
			for t := range tw {
				tw[t] = widen(taus[t])
			}
			want := bruteRow(widen(w), tw, wts, 0.7, 1.3)
			for j := range out {
				if math.Abs(float64(out[j])-want[j]) > 2e-6 {
					t.Fatalf("T %d n %d: entry %d is %v, want %v", T, n, j, out[j], want[j])
				}
			}
		}
	}
}

func TestOrthogonalPartIsOrthogonal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const n, T = 512, 4
	k := NewKernel(T)
	for range 20 {
		w := randRow(r, n, 1)
		taus := make([][]float32, T)
		for t := range taus {
			taus[t] = randRow(r, n, 0.1)
			for j := range taus[t] { // a strong parallel component
				taus[t][j] += 0.05 * w[j]
			}
		}
		sp := k.Decompose(w, taus, []float32{1, 1, 1, 1})
		// Δ⊥ = Σ a_t (τ̂_t − s_t w), in float64.
		perp := make([]float64, n)
		for t, a := range sp.A {
			for j := range perp {
				perp[j] += a * (float64(taus[t][j]) - sp.S[t]*float64(w[j]))
			}
		}
		var dot, pp, ww float64
		for j := range perp {
			dot += perp[j] * float64(w[j])
			pp += perp[j] * perp[j]
			ww += float64(w[j]) * float64(w[j])
		}
		if c := math.Abs(dot) / math.Sqrt(pp*ww); c > 1e-10 {
			t.Fatalf("|cos(Δ⊥, w)| = %v", c)
		}
	}
}

func TestTaskOrderDoesNotMatter(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const n, T = 200, 3
	w := randRow(r, n, 1)
	taus := [][]float32{randRow(r, n, 0.1), randRow(r, n, 0.1), randRow(r, n, 0.1)}
	wts := []float32{1, 2, 0.5}
	k := NewKernel(T)
	a, b := make([]float32, n), make([]float32, n)
	k.Row(w, taus, wts, 1, 1, a)
	k.Row(w, [][]float32{taus[2], taus[0], taus[1]}, []float32{wts[2], wts[0], wts[1]}, 1, 1, b)
	for j := range a {
		if math.Abs(float64(a[j]-b[j])) > 1e-6 {
			t.Fatalf("entry %d: %v vs %v", j, a[j], b[j])
		}
	}
	// Two tasks with orthogonal parts of equal norm: O·Oᵀ has a repeated
	// structure whose eigenvectors' signs are arbitrary.
	w = []float32{1, 0, 0}
	x, y := []float32{0, 1, 1}, []float32{0, 1, -1}
	k2 := NewKernel(2)
	k2.Row(w, [][]float32{x, y}, []float32{1, 1}, 1, 1, a[:3])
	k2.Row(w, [][]float32{y, x}, []float32{1, 1}, 1, 1, b[:3])
	for j := range 3 {
		if math.Abs(float64(a[j]-b[j])) > 1e-6 {
			t.Fatalf("symmetric pair: %v vs %v", a[:3], b[:3])
		}
	}
}

func TestRowDoesNotAllocate(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	w := randRow(r, 64, 1)
	taus := [][]float32{randRow(r, 64, 1), randRow(r, 64, 1), randRow(r, 64, 1)}
	out := make([]float32, 64)
	k := NewKernel(3)
	wts := []float32{1, 1, 1}
	if a := testing.AllocsPerRun(10, func() { k.Row(w, taus, wts, 1, 1, out) }); a != 0 {
		t.Fatalf("%v allocations per row", a)
	}
}

func TestElementwise(t *testing.T) {
	w := []float32{1, 1, 1, 1}
	taus := [][]float32{{1, -2, 0, 3}, {3, 2, 0, -1}}
	out := make([]float32, 4)
	Elementwise(w, taus, []float32{1, 1}, 2, make([]float64, 2), out)
	// TIES per entry: 2, no sign, 0, 3 → w + 2·that.
	if want := []float32{5, 1, 1, 7}; !equal(out, want) {
		t.Fatalf("got %v, want %v", out, want)
	}
}

func equal(a, b []float32) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

func BenchmarkRow4096(b *testing.B) {
	r := rand.New(rand.NewPCG(9, 10))
	const n = 4096
	w := randRow(r, n, 1)
	taus := [][]float32{randRow(r, n, 0.1), randRow(r, n, 0.1), randRow(r, n, 0.1)}
	out := make([]float32, n)
	k := NewKernel(3)
	wts := []float32{1, 1, 1}
	b.SetBytes(4 * 4 * n)
	for b.Loop() {
		k.Row(w, taus, wts, 0, 1, out)
	}
}

// TestEmptyTaskIsIgnored: a task whose trimmed row is zero has zero
// coordinates, so TIES' means run over the other tasks: the result is the
// merge without it.
func TestEmptyTaskIsIgnored(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	k3, k2 := NewKernel(3), NewKernel(2)
	for trial := range 50 {
		n := 5 + trial
		w := randRow(r, n, 1)
		a, c := randRow(r, n, 0.1), randRow(r, n, 0.1)
		got, want := make([]float32, n), make([]float32, n)
		k3.Row(w, [][]float32{a, make([]float32, n), c}, []float32{1, 1, 1}, 1, 1, got)
		k2.Row(w, [][]float32{a, c}, []float32{1, 1}, 1, 1, want)
		for j := range got {
			if math.Abs(float64(got[j]-want[j])) > 1e-6 {
				t.Fatalf("trial %d: %v, want %v", trial, got, want)
			}
		}
	}
}
