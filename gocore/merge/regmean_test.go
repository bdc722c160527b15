package merge

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"gonum.org/v1/gonum/mat"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// randomInputs draws an n×in matrix of layer inputs: N(0, 1) entries with
// per-feature scales, so the Gram matrix is far from a multiple of I.
func randomInputs(r *rand.Rand, in, n int) []float64 {
	x := make([]float64, n*in)
	for j := range in {
		s := 0.3 + 2*r.Float64()
		for i := range n {
			x[i*in+j] = s * r.NormFloat64()
		}
	}
	return x
}

// gramOf is XᵀX/N in float32.
func gramOf(x []float64, in, n int) []float32 {
	g := make([]float32, in*in)
	for a := range in {
		for b := range in {
			var s float64
			for i := range n {
				s += x[i*in+a] * x[i*in+b]
			}
			g[a*in+b] = float32(s / float64(n))
		}
	}
	return g
}

// randomGram is the Gram matrix of n random inputs of size in.
func randomGram(r *rand.Rand, in, n int) []float32 {
	return gramOf(randomInputs(r, in, n), in, n)
}

// linearLayer builds one out×in weight (stored transposed when tr) with its
// base and models, the models given in (out, in) layout.
func linearLayer(name string, out, in int, tr bool, base []float32, models ...[]float32) []Tensor {
	store := func(w []float32) []float32 {
		if tr {
			return transposeF32(w, out, in)
		}
		return w
	}
	ms := make([][]float32, len(models))
	for i, m := range models {
		ms[i] = store(m)
	}
	ts := one(name, store(base), ms...)
	ts[0].Shape = []int{out, in}
	if tr {
		ts[0].Shape = []int{in, out}
		ts[0].Transposed = true
	}
	return ts
}

// randomWeights returns k random out×in matrices.
func randomWeights(r *rand.Rand, k, out, in int) [][]float32 {
	ws := make([][]float32, k)
	for i := range ws {
		ws[i] = make([]float32, out*in)
		for j := range ws[i] {
			ws[i][j] = float32(r.NormFloat64())
		}
	}
	return ws
}

// outLayout reads a result back in (out, in) layout.
func outLayout(ts []Tensor, out, in int) []float32 {
	if ts[0].Transposed {
		return transposeF32(ts[0].Out.F32, in, out)
	}
	return ts[0].Out.F32
}

func TestRegMeanOneModelReturnsIt(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, tr := range []bool{false, true} {
		w := randomWeights(r, 2, 6, 9)
		ts := linearLayer("fc.weight", 6, 9, tr, w[0], w[1])
		p := DefaultParams("regmean")
		p.Statistics = map[string][]tensor.Vec{"fc.weight": stats(randomGram(r, 9, 40))}
		if err := Run("regmean", p, ts); err != nil {
			t.Fatal(err)
		}
		if got := outLayout(ts, 6, 9); !slices.Equal(got, w[1]) {
			t.Fatalf("transposed %v: T = 1 does not return the model:\n%v\n%v", tr, got, w[1])
		}
	}
}

func TestRegMeanEqualGramsIsTheMean(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	w := randomWeights(r, 4, 5, 8)
	g := randomGram(r, 8, 30)
	ts := linearLayer("fc.weight", 5, 8, false, w[0], w[1], w[2], w[3])
	p := DefaultParams("regmean")
	p.Statistics = map[string][]tensor.Vec{"fc.weight": stats(g, g, g)}
	if err := Run("regmean", p, ts); err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(w[0]))
	for j := range want {
		want[j] = (w[1][j] + w[2][j] + w[3][j]) / 3
	}
	if !near(ts[0].Out.F32, want, 1e-5) {
		t.Fatalf("got %v, want the mean %v", ts[0].Out.F32, want)
	}
}

// RegMean's motivation (Jin et al. §3.1): with α = 1 the merged layer is
// the least-squares fit of every model's outputs on its own inputs,
// argmin_W Σ_t ‖X_t Wᵀ − X_t W_tᵀ‖², computed here independently by QR on
// the stacked inputs (gonum's mat.Dense.Solve).
func TestRegMeanIsJointLeastSquares(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	const out, in, T, n = 4, 6, 3, 25
	w := randomWeights(r, T+1, out, in)
	var grams []tensor.Vec
	xs := mat.NewDense(T*n, in, nil)
	ys := mat.NewDense(T*n, out, nil)
	for m := range T {
		x := randomInputs(r, in, n)
		grams = append(grams, tensor.FromF32(gramOf(x, in, n)))
		for i := range n {
			for c := range in {
				xs.Set(m*n+i, c, x[i*in+c])
			}
			for o := range out {
				var s float64
				for c := range in {
					s += x[i*in+c] * float64(w[m+1][o*in+c])
				}
				ys.Set(m*n+i, o, s)
			}
		}
	}
	var sol mat.Dense // in × out = W*ᵀ
	if err := sol.Solve(xs, ys); err != nil {
		t.Fatal(err)
	}
	for _, tr := range []bool{false, true} {
		ts := linearLayer("fc.weight", out, in, tr, w[0], w[1], w[2], w[3])
		p := DefaultParams("regmean")
		p.Alpha = 1
		p.Statistics = map[string][]tensor.Vec{"fc.weight": grams}
		if err := Run("regmean", p, ts); err != nil {
			t.Fatal(err)
		}
		got := outLayout(ts, out, in)
		for o := range out {
			for c := range in {
				if d := math.Abs(float64(got[o*in+c]) - sol.At(c, o)); d > 2e-5 {
					t.Fatalf("transposed %v: W*[%d][%d] = %v, least squares %v", tr, o, c, got[o*in+c], sol.At(c, o))
				}
			}
		}
	}
}

// α = 0 keeps only diag(G): each input column is the average of the
// models' columns weighted by w_t·G_t[c][c], then λ scales the task vector.
func TestRegMeanDiagonalHandComputed(t *testing.T) {
	base := []float32{1, 1, 1, 1}                             // 2×2
	m1 := []float32{3, 1, 1, 5}                               // τ1 = [2 0; 0 4]
	m2 := []float32{1, 3, 5, 1}                               // τ2 = [0 2; 4 0]
	g1 := []float32{1, 0.5, 0.5, 3}                           // diag (1, 3)
	g2 := []float32{3, 9, 9, 1}                               // diag (3, 1); off-diagonal ignored
	ts := linearLayer("fc.weight", 2, 2, false, base, m1, m2) // (out, in)
	p := DefaultParams("regmean")
	p.Alpha, p.Lambda, p.Weights = 0, 0.5, []float32{1, 2}
	p.Statistics = map[string][]tensor.Vec{"fc.weight": stats(g1, g2)}
	if err := Run("regmean", p, ts); err != nil {
		t.Fatal(err)
	}
	// column 0: weights 1·1, 2·3 → (1·τ1 + 6·τ2)/7; column 1: 1·3, 2·1 → (3·τ1 + 2·τ2)/5.
	want := []float32{
		1 + 0.5*(1*2+6*0)/7.0, 1 + 0.5*(3*0+2*2)/5.0,
		1 + 0.5*(1*0+6*4)/7.0, 1 + 0.5*(3*4+2*0)/5.0,
	}
	if !near(ts[0].Out.F32, want, 1e-6) {
		t.Fatalf("got %v, want %v", ts[0].Out.F32, want)
	}
}

// An input feature no example activated (a zero row and column in every
// Gram) makes the system singular: the ridge is reported and the dead
// column takes the weighted mean of the models' columns.
func TestRegMeanRidgeOnDeadFeature(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	const out, in = 3, 5
	w := randomWeights(r, 3, out, in)
	grams := make([][]float32, 2)
	for m := range grams {
		x := randomInputs(r, in, 20)
		for i := range 20 {
			x[i*in+2] = 0 // feature 2 is dead
		}
		grams[m] = gramOf(x, in, 20)
	}
	ts := linearLayer("fc.weight", out, in, false, w[0], w[1], w[2])
	p := DefaultParams("regmean")
	p.Weights = []float32{1, 3}
	p.Statistics = map[string][]tensor.Vec{"fc.weight": stats(grams...)}
	rep, err := RunReport("regmean", p, ts)
	if err != nil {
		t.Fatal(err)
	}
	ridge, ok := rep["ridge"].(map[string]float64)
	if !ok || !(ridge["fc.weight"] > 0) {
		t.Fatalf("no ridge reported: %v", rep)
	}
	for o := range out {
		want := (w[1][o*in+2] + 3*w[2][o*in+2]) / 4
		if got := ts[0].Out.F32[o*in+2]; math.Abs(float64(got-want)) > 1e-5 {
			t.Fatalf("dead column row %d: got %v, want the weighted mean %v", o, got, want)
		}
	}
}

func TestRegMeanLayout(t *testing.T) {
	cases := []struct {
		name  string
		shape []int
		tr    bool
		gram  int
		want  linearLayout
		err   string
	}{
		{"linear", []int{3, 5}, false, 25, linearLayout{out: 3, in: 5}, ""},
		{"conv1d inferred", []int{5, 3}, false, 25, linearLayout{out: 3, in: 5, transposed: true}, ""},
		{"square", []int{4, 4}, false, 16, linearLayout{out: 4, in: 4}, ""},
		{"square flagged", []int{4, 4}, true, 16, linearLayout{out: 4, in: 4, transposed: true}, ""},
		{"wrong side", []int{3, 5}, false, 16, linearLayout{}, "is 4×4, but the tensor's shape is [3 5]"},
		{"not square", []int{3, 5}, false, 24, linearLayout{}, "has 24 entries, not a square matrix"},
		{"1-D", []int{5}, false, 25, linearLayout{}, "only 2-D linear weights have one"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := regmeanLayout(&Tensor{Name: "w", Shape: tc.shape, Transposed: tc.tr}, tc.gram)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error containing %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestRegMeanBadInput(t *testing.T) {
	nan := float32(math.NaN())
	cases := []struct {
		name string
		edit func(p *Params)
		want string
	}{
		{"nan", func(p *Params) { p.Statistics["fc.weight"][1].F32[3] = nan }, `tensor "fc.weight": the Gram matrix of model 1 has NaN at flat index 3`},
		{"negative diagonal", func(p *Params) { p.Statistics["fc.weight"][0].F32[0] = -2 }, "negative diagonal entry -2 at (0, 0)"},
		{"size", func(p *Params) { p.Statistics["fc.weight"][0] = tensor.FromF32(make([]float32, 9)) }, "is 3×3, but the tensor's shape is [2 2]"},
		{"alpha", func(p *Params) { p.Alpha = 1.5 }, "alpha must lie in [0, 1], got 1.5"},
		{"negative weight", func(p *Params) { p.Weights = []float32{-1, 2} }, "weight 0 is -1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("regmean")
			p.Statistics = map[string][]tensor.Vec{"fc.weight": stats([]float32{1, 0, 0, 1}, []float32{2, 0, 0, 2})}
			tc.edit(&p)
			err := Run("regmean", p, linearLayer("fc.weight", 2, 2, false, make([]float32, 4), []float32{1, 2, 3, 4}, []float32{4, 3, 2, 1}))
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrInput containing %q", err, tc.want)
			}
		})
	}
}
