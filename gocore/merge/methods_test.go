package merge

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/topk"
)

// shaped is one with a shape.
func shaped(name string, shape []int, base []float32, models ...[]float32) []Tensor {
	ts := one(name, base, models...)
	ts[0].Shape = shape
	return ts
}

func near(got, want []float32, tol float64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > tol {
			return false
		}
	}
	return true
}

func TestNewMethodsHandComputed(t *testing.T) {
	zero8 := make([]float32, 8)
	tau8 := []float32{1, -2, 3, 0.5, -4, 0.25, 2.5, -0.1}
	zero4 := make([]float32, 4)
	r2 := float32(math.Sqrt2 / 2)
	ms := float32(2 * (math.Sqrt2 / 2) / (1 + math.Sqrt2/2)) // t for cos φ = 1/√2, T = 2
	cases := []struct {
		name   string
		method string
		p      Params
		base   []float32
		models [][]float32
		want   []float32
	}{
		// |τ| ranks: 4, 3, 2.5, 2, 1, 0.5, 0.25, 0.1. γ = 1/8 drops 4, density ½ keeps the next four.
		{"breadcrumbs band", "breadcrumbs", Params{Lambda: 1, Density: 0.5, Gamma: 0.125}, zero8, [][]float32{tau8}, []float32{1, -2, 3, 0, 0, 0, 2.5, 0}},
		// g = min(⌊0.5·8⌋, 8 − 6) = 2: ranks 2..7 kept.
		{"breadcrumbs drop shrinks", "breadcrumbs", Params{Lambda: 1, Density: 0.75, Gamma: 0.5}, zero8, [][]float32{tau8}, []float32{1, -2, 0, 0.5, 0, 0.25, 2.5, -0.1}},
		{"breadcrumbs gamma 0 is top-k", "breadcrumbs", Params{Lambda: 1, Density: 0.25}, zero8, [][]float32{tau8}, []float32{0, 0, 3, 0, -4, 0, 0, 0}},
		{"breadcrumbs density 1 keeps all", "breadcrumbs", Params{Lambda: 1, Density: 1, Gamma: 0.5}, zero8, [][]float32{tau8}, tau8},
		// four equal magnitudes: rank 0 is index 0 (dropped), ranks 1, 2 kept.
		{"breadcrumbs ties by index", "breadcrumbs", Params{Lambda: 1, Density: 0.5, Gamma: 0.25}, zero4, [][]float32{{1, 1, 1, 1}}, []float32{0, 1, 1, 0}},
		// τ̂1 = [1 −2 3 0 0 0 2.5 0]; model 2 drops its 3, keeps 2, 1 and
		// the first two zeros: τ̂2 = [0 2 1 0 0 0 0 0]. Index 1 sums to 0:
		// γ = + keeps the 2.
		{"breadcrumbs_ties", "breadcrumbs_ties", Params{Lambda: 1, Density: 0.5, Gamma: 0.125, Normalize: true}, zero8,
			[][]float32{tau8, {0, 2, 1, 0, 0, 0, 3, 0}}, []float32{1, 2, 2, 0, 0, 0, 2.5, 0}},
		// τ_MTL = [2 0 2.5 0]; masks (λ_t = ½): t1 all, t2 fails at index 2 → counts [2 2 1 2].
		{"consensus_ta", "consensus_ta", Params{Lambda: 1, K: 2, TallLambda: 0.5}, zero4, [][]float32{{1, -2, 3, 0}, {1, 2, -0.5, 0}}, []float32{2, 0, 0, 0}},
		{"consensus_ta k 1", "consensus_ta", Params{Lambda: 2, K: 1, TallLambda: 0.5}, zero4, [][]float32{{1, -2, 3, 0}, {1, 2, -0.5, 0}}, []float32{4, 0, 5, 0}},
		// TIES at density 1: τ_MTL = [1 2 3 0] (index 1 sums to 0: γ = +);
		// masks: t2 fails at index 2 → counts [2 2 1 2].
		{"consensus_ties", "consensus_ties", Params{Lambda: 1, Density: 1, Normalize: true, K: 2, TallLambda: 0.5}, zero4,
			[][]float32{{1, -2, 3, 0}, {1, 2, -0.5, 0}}, []float32{1, 2, 0, 0}},
		{"model_stock orthogonal", "model_stock", Params{}, []float32{1, 1}, [][]float32{{2, 1}, {1, 2}}, []float32{1, 1}},
		{"model_stock 45°", "model_stock", Params{}, []float32{0, 0}, [][]float32{{1, 0}, {1, 1}}, []float32{ms, ms / 2}},
		{"model_stock collinear", "model_stock", Params{}, []float32{0, 0}, [][]float32{{1, 2}, {3, 6}}, []float32{2, 4}},
		{"slerp quarter circle", "slerp", Params{T: 0.5}, []float32{9, 9}, [][]float32{{1, 0}, {0, 1}}, []float32{r2, r2}},
		{"slerp t 0", "slerp", Params{T: 0}, []float32{9, 9}, [][]float32{{1, 0}, {0, 1}}, []float32{1, 0}},
		{"slerp collinear lerps", "slerp", Params{T: 0.25}, []float32{9, 9}, [][]float32{{1, 0}, {3, 0}}, []float32{1.5, 0}},
		{"slerp opposite-ish", "slerp", Params{T: 0.5}, []float32{0, 0}, [][]float32{{1, 0}, {-1, 1e-6}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := one("w", tc.base, tc.models...)
			if err := Run(tc.method, tc.p, ts); err != nil {
				t.Fatal(err)
			}
			got := ts[0].Out.F32
			if tc.want == nil {
				for _, x := range got {
					if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
						t.Fatalf("got %v", got)
					}
				}
				return
			}
			if !near(got, tc.want, 1e-6) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// pcbExpected computes PCB for one tensor straight from the definition
// (sorting, float64 exp/tanh rounded to float32 as the engine does).
func pcbExpected(base []float32, models [][]float32, density float64, lam float32) []float32 {
	T, d := len(models), len(base)
	taus := make([][]float32, T)
	for m := range taus {
		taus[m] = make([]float32, d)
		for j := range base {
			taus[m][j] = models[m][j] - base[j]
		}
	}
	q := func(x []float32, i int) float32 {
		s := slices.Clone(x)
		slices.Sort(s)
		return s[i]
	}
	sum := make([]float32, d)
	for _, tau := range taus {
		for j, x := range tau {
			sum[j] += x
		}
	}
	scale := make([][]float32, T)
	clipped := make([][]float32, T)
	for m, tau := range taus {
		abs := make([]float32, d)
		for j, x := range tau {
			abs[j] = float32(math.Abs(float64(x)))
		}
		lo, hi := q(abs, int(float64(d)*1e-4)), q(abs, int(float64(d)*(1-1e-4)-1))
		beta := make([]float32, d)
		clipped[m] = make([]float32, d)
		for j := range tau {
			c := min(max(abs[j], lo), hi)
			clipped[m][j] = c * float32(sign(tau[j]))
			var x float32
			if hi > lo {
				x = (c - lo) / (hi - lo)
			}
			intra := float32(math.Exp(float64(float32(T) * (x * x))))
			beta[j] = intra * float32(math.Tanh(float64(tau[j]*sum[j])))
		}
		cut, bmax := q(beta, int(float64(d)*(1-density))), slices.Max(beta)
		scale[m] = make([]float32, d)
		for j, b := range beta {
			if bmax > cut {
				scale[m][j] = (max(b, cut) - cut) / (bmax - cut)
			}
		}
	}
	out := make([]float32, d)
	for j := range out {
		var num, den float32
		for m := range taus {
			num += scale[m][j] * clipped[m][j]
			den += scale[m][j]
		}
		out[j] = base[j] + lam*(num/max(den, 1e-12))
	}
	return out
}

func sign(x float32) float64 {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

func TestPCBMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, d := range []int{1, 4, 37, 5000} {
		base := make([]float32, d)
		models := [][]float32{make([]float32, d), make([]float32, d), make([]float32, d)}
		for j := range base {
			base[j] = float32(r.NormFloat64())
			for m := range models {
				models[m][j] = base[j] + float32(0.1*r.NormFloat64())
			}
		}
		for _, density := range []float64{0.1, 0.5, 1} {
			ts := one("w", base, models...)
			if err := Run("pcb", Params{Lambda: 0.8, Density: density}, ts); err != nil {
				t.Fatal(err)
			}
			if want := pcbExpected(base, models, density, 0.8); !near(ts[0].Out.F32, want, 1e-6) {
				t.Fatalf("d %d density %v: got %v, want %v", d, density, ts[0].Out.F32[:min(d, 6)], want[:min(d, 6)])
			}
		}
	}
}

// dellaExpected applies DELLA's magprune to a (rows, cols) task vector
// from the definition, with a sort for the ranks.
func dellaExpected(tau []float32, rows, cols int, density, eps float64, key uint64) []float32 {
	out := make([]float32, len(tau))
	for r := range rows {
		row := tau[r*cols : (r+1)*cols]
		idx := make([]int, cols)
		for j := range idx {
			idx[j] = j
		}
		sort.SliceStable(idx, func(a, b int) bool { return math.Abs(float64(row[idx[a]])) < math.Abs(float64(row[idx[b]])) })
		for rank, j := range idx {
			rn := float32(0.5)
			if cols > 1 {
				rn = float32(rank) / float32(cols-1)
			}
			p := float32(density-eps) + float32(rn*(2*float32(eps)))
			if rng.Uniform(key, uint64(r*cols+j)) < p {
				out[r*cols+j] = row[j]
			}
		}
	}
	return l1Rescaled(tau, out)
}

// l1Rescaled multiplies kept by float32(Σ|tau|)/float32(Σ|kept|) (mergekit's
// L1 rescale), unless a sum is below 1e-7.
func l1Rescaled(tau, kept []float32) []float32 {
	var before, after float64
	for j := range tau {
		before += math.Abs(float64(tau[j]))
		after += math.Abs(float64(kept[j]))
	}
	if float32(before) < 1e-7 || float32(after) < 1e-7 {
		return kept
	}
	f := float32(before) / float32(after)
	for j := range kept {
		kept[j] *= f
	}
	return kept
}

func TestDellaMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	cases := []struct {
		shape      []int
		rows, cols int
	}{
		{[]int{1}, 1, 1},
		{[]int{300}, 1, 300},
		{[]int{40, 700}, 40, 700},   // radix-ranked rows
		{[]int{6, 2, 3, 3}, 6, 18},  // conv kernel
		{[]int{3, 20000}, 3, 20000}, // rows longer than a chunk
	}
	for _, tc := range cases {
		n := tc.rows * tc.cols
		tau := make([]float32, n)
		for j := range tau {
			tau[j] = float32(r.NormFloat64())
			if j%7 == 3 {
				tau[j] = 0.5 // ties
			}
		}
		ts := shaped("blk.w", tc.shape, make([]float32, n), tau)
		p := Params{Lambda: 1, Density: 0.4, Epsilon: 0.2, Seed: 3, Rescale: true}
		if err := Run("della_linear", p, ts); err != nil {
			t.Fatal(err)
		}
		want := dellaExpected(tau, tc.rows, tc.cols, 0.4, 0.2, rng.Key(3, "blk.w", 0))
		if !slices.Equal(ts[0].Out.F32, want) {
			t.Fatalf("shape %v: result differs from the definition", tc.shape)
		}
	}
}

// transposeF32 returns the (cols, rows) transpose of a (rows, cols) matrix.
func transposeF32(x []float32, rows, cols int) []float32 {
	y := make([]float32, len(x))
	for r := range rows {
		for c := range cols {
			y[c*rows+r] = x[r*cols+c]
		}
	}
	return y
}

// TestTransposedIsTransposeOfPlain: a tensor stored (in, out) and flagged
// merges like its (out, in) transpose, for the row-wise methods (and is
// ignored by the others).
func TestTransposedIsTransposeOfPlain(t *testing.T) {
	const in, out = 37, 2*parallel.Chunk/37 + 5 // row blocks span storage rows
	r := rand.New(rand.NewPCG(9, 10))
	fill := func() []float32 {
		x := make([]float32, in*out)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		return x
	}
	base, m1, m2 := fill(), fill(), fill()
	for _, method := range []string{"della", "neuro", "ties"} {
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
			p := DefaultParams(method)
			p.Lam2 = 1.5
			vec := func(x []float32) tensor.Vec {
				v := tensor.Alloc(len(x), dt)
				v.Store(x, 0)
				return v
			}
			stored := Tensor{Name: "h.0.mlp.c_fc.weight", Shape: []int{in, out}, Transposed: true,
				Base: vec(base), Models: []tensor.Vec{vec(m1), vec(m2)}, Out: tensor.Alloc(in*out, dt)}
			plain := Tensor{Name: "h.0.mlp.c_fc.weight", Shape: []int{out, in},
				Base: vec(transposeF32(base, in, out)), Models: []tensor.Vec{vec(transposeF32(m1, in, out)), vec(transposeF32(m2, in, out))},
				Out: tensor.Alloc(in*out, dt)}
			if err := Run(method, p, []Tensor{stored}); err != nil {
				t.Fatal(err)
			}
			if err := Run(method, p, []Tensor{plain}); err != nil {
				t.Fatal(err)
			}
			got, want := outputs([]Tensor{stored})[0], outputs([]Tensor{plain})[0]
			if method == "ties" {
				want = outputs([]Tensor{stored})[0] // elementwise: the flag changes nothing
				stored.Transposed = false
				if err := Run(method, p, []Tensor{stored}); err != nil {
					t.Fatal(err)
				}
				got = outputs([]Tensor{stored})[0]
			} else {
				want = transposeF32(want, out, in)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s %v: flagged tensor differs from its transpose", method, dt)
			}
		}
	}
}

// topkKeep applies a topk.Cut the way the engine applied it before it had
// selections of its own.
func topkKeep(c topk.Cut, chunk int, tau []float32) {
	if c.All {
		return
	}
	if c.None {
		clear(tau)
		return
	}
	allow := c.Allow(chunk)
	for j, x := range tau {
		a := topk.AbsBits(x)
		switch {
		case a > c.Bits:
		case a == c.Bits && allow != 0:
			allow--
		default:
			tau[j] = 0
		}
	}
}

// TestSelectionMatchesTopk checks the one-pass selection against
// topk.Select on random, tied and adversarial data, small units (exact)
// and large ones (sampled), every k from none to all.
func TestSelectionMatchesTopk(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	n := exactUnit + 3*parallel.Chunk + 17
	gens := map[string]func(i int) float32{
		"normal":    func(int) float32 { return float32(r.NormFloat64()) },
		"quantized": func(int) float32 { return float32(r.IntN(9)-4) / 4 },
		// The strided sample only sees the huge entries: the bracket misses
		// and the exact fallback runs.
		"adversarial": func(i int) float32 {
			blocks := min(max(n/64, minSample), sampleSize) / sampleBlock
			if i%((n+blocks-1)/blocks) < sampleBlock {
				return 1000 + float32(r.Float64())
			}
			return float32(r.Float64())
		},
	}
	for name, gen := range gens {
		for _, size := range []int{1, 100, n} {
			tau := make([]float32, size)
			for i := range tau {
				tau[i] = gen(i)
			}
			ts := one("w", make([]float32, size), tau)
			e, err := newEngine(registry["magnitude_prune"], Params{Density: 0.5}, ts)
			if err != nil {
				t.Fatal(err)
			}
			un := e.units()[0]
			ks := []int64{0, 1, int64(size) / 10, int64(size) / 2, int64(size) - 1, int64(size)}
			var tg []rankTarget
			for _, k := range ks {
				tg = append(tg, rankTarget{0, k})
			}
			sels, err := e.selectUnits([]int{0}, true, func(int, int64) []rankTarget { return tg })
			if err != nil {
				t.Fatal(err)
			}
			var fail chunkError
			for i, k := range ks {
				want := topk.Select(k, un.n, len(un.chunks), e.magnitudes(0, un.chunks, &fail), 1)
				var keptWant float64
				for c, ch := range un.chunks {
					a, b := slices.Clone(tau[ch.lo:ch.hi]), slices.Clone(tau[ch.lo:ch.hi])
					keepTop(&sels[0].cuts[i], c, a)
					topkKeep(want, c, b)
					if !slices.Equal(a, b) {
						t.Fatalf("%s n %d k %d chunk %d: kept entries differ from topk.Select's", name, size, k, c)
					}
					keptWant += absSum(b)
				}
				if got := sels[0].kept[i]; math.Abs(got-keptWant) > 1e-9*math.Max(1, keptWant) {
					t.Fatalf("%s n %d k %d: kept sum %v, want %v", name, size, k, got, keptWant)
				}
			}
		}
	}
}

func TestNeuroReport(t *testing.T) {
	// One tensor, two models, mask_rate ½: model 0 keeps |4|, |3| of
	// 1+2+3+4 = 10 (σ = 0.3); model 1 keeps 8 and the first |1| of
	// 8+1+0+1 (σ = 0.1).
	ts := shaped("w", []int{4}, make([]float32, 4), []float32{1, -2, 3, 4}, []float32{8, 1, 0, -1})
	p := DefaultParams("neuro")
	p.MaskRate = 0.5
	p.Lam2 = 0 // automatic
	rep, err := RunReport("neuro", p, ts)
	if err != nil {
		t.Fatal(err)
	}
	sigma := rep["sigma"].([]float64)
	lam2 := rep["lam2"].(float64)
	if math.Abs(sigma[0]-0.3) > 1e-12 || math.Abs(sigma[1]-0.1) > 1e-12 || math.Abs(lam2-1/0.7) > 1e-12 || rep["lam2_auto"] != true {
		t.Fatalf("report %v", rep)
	}
	// 1-D: elementwise TIES of τ̂1 = [0 0 3 4], τ̂2 = [8 1 0 0], scaled by λ₂.
	want := []float32{float32(8 / 0.7), float32(1 / 0.7), float32(3 / 0.7), float32(4 / 0.7)}
	if !near(ts[0].Out.F32, want, 1e-5) {
		t.Fatalf("got %v, want %v", ts[0].Out.F32, want)
	}
	p.Lam2 = 2
	rep, err = RunReport("neuro", p, ts)
	if err != nil {
		t.Fatal(err)
	}
	if rep["lam2"] != 2.0 || rep["lam2_auto"] != false {
		t.Fatalf("report %v", rep)
	}
}

// TestNeuroSmallMatrix: w = rows of the identity; τ̂ rows chosen so the
// split is hand-computable (see package neuro's tests for the kernel).
func TestNeuroSmallMatrix(t *testing.T) {
	base := []float32{1, 0, 0, 0, 1, 0}
	m1 := []float32{3, 1, 0, 0, 1, 0} // row 0: τ = [2 1 0]; row 1: 0
	m2 := []float32{1, 0, 3, 0, 1, 0} // row 0: τ = [0 0 3]
	ts := shaped("w", []int{2, 3}, base, m1, m2)
	p := Params{Lambda: 1, MaskRate: 0, Lam1: 1, Lam2: 1, Scope: ScopeGlobal}
	if err := Run("neuro", p, ts); err != nil {
		t.Fatal(err)
	}
	// s = (2, 0) → s̄ = 2, Δ∥ = [2 0 0]; o1 = [0 1 0], o2 = [0 0 3] → Δ⊥ = [0 1 3].
	if want := []float32{3, 1, 3, 0, 1, 0}; !near(ts[0].Out.F32, want, 1e-6) {
		t.Fatalf("got %v, want %v", ts[0].Out.F32, want)
	}
}

func TestNewMethodsBadInput(t *testing.T) {
	two := func() []Tensor { return one("w", []float32{0, 0}, []float32{1, 2}, []float32{2, 1}) }
	three := func() []Tensor { return one("w", []float32{0}, []float32{1}, []float32{2}, []float32{3}) }
	cases := []struct {
		name   string
		method string
		p      Params
		ts     []Tensor
		want   string
	}{
		{"slerp three", "slerp", Params{T: 0.5}, three(), "slerp merges exactly 2 models, got 3"},
		{"slerp t", "slerp", Params{T: 1.5}, two(), "t must lie in [0, 1], got 1.5"},
		{"model_stock one", "model_stock", Params{}, one("w", []float32{0}, []float32{1}), "at least 2 fine-tuned models, got 1"},
		{"model_stock opposite", "model_stock", Params{}, one("w", []float32{0, 0}, []float32{1, 1}, []float32{-1, -1}), `task vectors of tensor "w" cancel out`},
		{"gamma", "breadcrumbs", Params{Density: 0.5, Gamma: 1}, two(), "gamma must lie in [0, 1), got 1"},
		{"della epsilon", "della", Params{Density: 0.2, Epsilon: 0.3}, two(), "density ± epsilon must lie in (0, 1)"},
		{"della density + epsilon = 1", "della", Params{Density: 0.8, Epsilon: 0.2}, two(), "density ± epsilon must lie in (0, 1)"},
		{"della negative epsilon", "della_linear", Params{Density: 0.2, Epsilon: -0.1}, two(), "epsilon must be ≥ 0, got -0.1"},
		{"della density", "della", Params{Density: 0}, two(), "density must lie in (0, 1], got 0"},
		{"pcb density", "pcb", Params{Density: 2}, two(), "density must lie in (0, 1], got 2"},
		{"consensus k", "consensus_ta", Params{K: -1}, two(), "k must be ≥ 0, got -1"},
		{"consensus lambdas", "consensus_ties", Params{Density: 1, TallLambdas: []float64{0.4}}, two(), "tall_lambda has 1 values for 2 models"},
		{"consensus lambda", "consensus_ta", Params{TallLambda: math.NaN()}, two(), "tall_lambda must be a finite number, got NaN"},
		{"mask rate", "neuro", Params{MaskRate: 1}, two(), "mask_rate must lie in [0, 1), got 1"},
		{"lam2", "neuro", Params{MaskRate: 0.9, Lam2: -1}, two(), "lam2 must be > 0, got -1"},
		{"lam1", "neuro", Params{MaskRate: 0.9, Lam1: math.Inf(1)}, two(), "lam1 must be a finite number, got +Inf"},
		{"nan in neuro prepare", "neuro", Params{MaskRate: 0.5, Scope: ScopeGlobal},
			one("w", []float32{0, 0}, []float32{1, float32(math.NaN())}), `tensor "w": model 0 has NaN at flat index 1`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(tc.method, tc.p, tc.ts)
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrInput containing %q", err, tc.want)
			}
		})
	}
}

func TestDefaultParams(t *testing.T) {
	for _, tc := range []struct {
		method    string
		normalize bool
		scope     Scope
	}{
		{"linear", true, ScopeTensor}, {"ties", true, ScopeTensor}, {"della", true, ScopeTensor},
		{"consensus_ties", true, ScopeTensor}, {"breadcrumbs", false, ScopeTensor},
		{"della_linear", false, ScopeTensor}, {"task_arithmetic", false, ScopeTensor}, {"neuro", false, ScopeGlobal},
	} {
		p := DefaultParams(tc.method)
		if p.Normalize != tc.normalize || p.Scope != tc.scope || p.Gamma != 0.01 || p.Epsilon != 0.15 || p.MaskRate != 0.5 || p.K != 2 || p.TallLambda != 0.4 || p.Lambda != 1 {
			t.Errorf("%s: %+v", tc.method, p)
		}
	}
}

func TestMergerReportsAsItGoes(t *testing.T) {
	ts := append(shaped("a", []int{2}, []float32{0, 0}, []float32{1, 0}, []float32{1, 1}),
		shaped("b", []int{2}, []float32{0, 0}, []float32{1, 0}, []float32{0, 1})...)
	m, err := NewMerger("model_stock", DefaultParams("model_stock"), ts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Tensor(1, tensor.Alloc(2, tensor.F32)); err != nil {
		t.Fatal(err)
	}
	rep := m.Report()
	if got := rep["t"].(map[string]float64); len(got) != 1 || got["b"] != 0 {
		t.Fatalf("report after tensor b: %v", rep)
	}
	if err := m.Tensor(0, tensor.Alloc(2, tensor.F32)); err != nil {
		t.Fatal(err)
	}
	if got := rep["t"].(map[string]float64); len(got) != 1 {
		t.Fatalf("the earlier report changed: %v", got)
	}
	if got := m.Report()["t"].(map[string]float64); len(got) != 2 || math.Abs(got["a"]-2*math.Sqrt2/2/(1+math.Sqrt2/2)) > 1e-12 {
		t.Fatalf("report: %v", got)
	}
	if err := m.Tensor(2, tensor.Alloc(2, tensor.F32)); err == nil {
		t.Fatal("index out of range accepted")
	}
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"", "tensor", "global", "Global", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sc, err := ParseScope(s)
		if err != nil {
			return
		}
		if s != "" && sc.String() != s {
			t.Fatalf("%q parsed to %v", s, sc)
		}
	})
}
