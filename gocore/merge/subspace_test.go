package merge

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/linalg"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// mat2 builds a one-tensor merge of a 2-D (rows×cols) tensor, zero base.
func mat2(rows, cols int, models ...[]float32) []Tensor {
	return shaped("blk.w", []int{rows, cols}, make([]float32, rows*cols), models...)
}

// TestSubspaceHandComputed: small cases whose SVDs are known by hand.
func TestSubspaceHandComputed(t *testing.T) {
	// τ = 10·a·bᵀ, a = (1, 2, 2)/3, b = (3, 4)/5: rank 1, σ₁ = 10, r = 2.
	a, b := []float32{1. / 3, 2. / 3, 2. / 3}, []float32{0.6, 0.8}
	rank1 := make([]float32, 6)
	for i := range 3 {
		for j := range 2 {
			rank1[i*2+j] = 10 * a[i] * b[j]
		}
	}
	half := make([]float32, 6)
	for i, v := range rank1 {
		half[i] = v / 4 // λ = ½ times τ/r
	}
	cases := []struct {
		name   string
		method string
		p      Params
		ts     []Tensor
		want   []float32
	}{
		// Iso-C, T = 1, rank 1: Δ = σ̄·u·vᵀ = (σ₁/r)·u·vᵀ = τ/r.
		{"iso_c rank 1", "iso_c", Params{Lambda: 0.5}, shaped("w", []int{3, 2}, make([]float32, 6), rank1), half},
		// diag(3, −1) = I·diag(3, 1)·diag(1, −1): σ̄ = 2.
		{"iso_c diagonal", "iso_c", Params{Lambda: 1}, mat2(2, 2, []float32{3, 0, 0, -1}), []float32{2, 0, 0, -2}},
		// Δ_TA = diag(2, 4): σ̄ = 3, U·Vᵀ = I.
		{"iso_c two tasks", "iso_c", Params{Lambda: 1}, mat2(2, 2, []float32{2, 0, 0, 0}, []float32{0, 0, 0, 4}), []float32{3, 0, 0, 3}},
		// weights scale τ_t first: 0.5·diag(2, 0) + 2·diag(0, 1) = diag(1, 2).
		{"iso_c weights", "iso_c", Params{Lambda: 1, Weights: []float32{0.5, 2}}, mat2(2, 2, []float32{2, 0, 0, 0}, []float32{0, 0, 0, 1}), []float32{1.5, 0, 0, 1.5}},
		{"iso_c zero", "iso_c", Params{Lambda: 1}, shaped("w", []int{2, 2}, []float32{1, 2, 3, 4}, []float32{1, 2, 3, 4}), []float32{1, 2, 3, 4}},
		// TSV, T = 2, k = 1: 5·e₁e₁ᵀ and 2·e₂e₂ᵀ are already orthogonal.
		{"tsv diagonal", "tsv", Params{Lambda: 1}, mat2(2, 2, []float32{5, 0, 0, 1}, []float32{0.5, 0, 0, 2}), []float32{5, 0, 0, 2}},
		{"tsv T=1 is τ", "tsv", Params{Lambda: 2}, shaped("w", []int{3, 2}, make([]float32, 6), rank1), scaledF32(rank1, 2)},
		// r = 2 < T = 3: k = 0, Δ = 0 (the authors' code does the same).
		{"tsv k=0", "tsv", Params{Lambda: 1}, shaped("w", []int{2, 3}, []float32{1, 1, 1, 1, 1, 1}, []float32{2, 0, 0, 0, 0, 0}, []float32{0, 3, 0, 0, 0, 0}, []float32{0, 0, 4, 0, 0, 0}), []float32{1, 1, 1, 1, 1, 1}},
		// Iso-CTS, T = 1: common + own directions = τ's SVD: Iso-C.
		{"iso_cts T=1", "iso_cts", Params{Lambda: 1, CommonSpaceFraction: 0.5}, mat2(2, 2, []float32{3, 0, 0, -1}), []float32{2, 0, 0, -2}},
		// 1-D tensors: base + λ·Σ w_t·τ_t / T = 1 + ½·(2, 12, −1)/2.
		{"1-D mean", "iso_cts", Params{Lambda: 0.5, CommonSpaceFraction: 0.8, Weights: []float32{1, 3}}, shaped("b", []int{3}, []float32{1, 1, 1}, []float32{3, 1, 0}, []float32{1, 5, 1}), []float32{1.5, 4, 0.75}},
		{"conv kernel mean", "tsv", Params{Lambda: 1}, shaped("c", []int{1, 1, 2}, []float32{0, 0}, []float32{2, 4}, []float32{0, 2}), []float32{1, 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := Run(tc.method, tc.p, tc.ts); err != nil {
				t.Fatal(err)
			}
			if got := tc.ts[0].Out.F32; !near(got, tc.want, 1e-5) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func scaledF32(x []float32, s float32) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = s * v
	}
	return y
}

// randMat returns rows×cols N(0, σ²) entries.
func randMat(r *rand.Rand, rows, cols int, sigma float64) []float32 {
	x := make([]float32, rows*cols)
	for i := range x {
		x[i] = float32(sigma * r.NormFloat64())
	}
	return x
}

// spectrum returns the singular values of the m×n matrix x, descending.
func spectrum(t *testing.T, x []float32, m, n int) []float64 {
	t.Helper()
	s, err := linalg.GramSVD(parallel.Pool{}, linalg.Matrix{Rows: m, Cols: n, Data: x}, min(m, n))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float64, len(s.S))
	for i, v := range s.S {
		out[i] = float64(v)
	}
	return out
}

// TestSubspaceSpectra checks what each method promises about the
// spectrum of Δ, on random matrices (tall, wide, and stored transposed),
// with weights: TSV's Δ = U⊥·S·V⊥ᵀ has exactly the per-task top-k singular
// values (U⊥, V⊥ orthonormal); Iso-C's Δ has every singular value equal to
// σ̄ and ⟨Δ, Δ_TA⟩ = σ̄·‖Δ_TA‖_* (its singular vectors are Δ_TA's);
// Iso-CTS's Δ has r singular values equal to its σ̄. Tolerance: 2e-5
// relative (float32 data).
func TestSubspaceSpectra(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	w := []float32{1, 0.5, 2}
	for _, sh := range []struct {
		rows, cols int
		transposed bool
	}{{40, 24, false}, {24, 40, false}, {40, 24, true}} {
		m, n := sh.rows, sh.cols // layout (out, in)
		if sh.transposed {
			m, n = n, m
		}
		taus := [][]float32{randMat(r, sh.rows, sh.cols, 1), randMat(r, sh.rows, sh.cols, 0.3), randMat(r, sh.rows, sh.cols, 2)}
		// Weighted task vectors in layout order.
		layout := make([][]float32, 3)
		sum := make([]float32, m*n)
		for k, x := range taus {
			if sh.transposed {
				x = transposeF32(x, sh.rows, sh.cols)
			}
			layout[k] = scaledF32(x, w[k])
			for i, v := range layout[k] {
				sum[i] += v
			}
		}
		rr := min(m, n)
		run := func(method string, p Params) []float32 {
			p.Lambda, p.Weights = 1, w
			ts := shaped("blk.w", []int{sh.rows, sh.cols}, make([]float32, m*n), taus...)
			ts[0].Transposed = sh.transposed
			if err := Run(method, p, ts); err != nil {
				t.Fatal(err)
			}
			d := ts[0].Out.F32
			if sh.transposed {
				d = transposeF32(d, sh.rows, sh.cols)
			}
			return d
		}
		check := func(name string, got, want []float64) {
			t.Helper()
			for i := range want {
				if math.Abs(got[i]-want[i]) > 2e-5*want[0] {
					t.Fatalf("%dx%d %v %s: σ[%d] = %v, want %v", m, n, sh.transposed, name, i, got[i], want[i])
				}
			}
		}
		// TSV.
		k := rr / 3
		var want []float64
		for _, x := range layout {
			want = append(want, spectrum(t, x, m, n)[:k]...)
		}
		sort.Sort(sort.Reverse(sort.Float64Slice(want)))
		got := spectrum(t, run("tsv", Params{}), m, n)
		check("tsv", got[:3*k], want)
		for _, v := range got[3*k:] {
			if v > 1e-5*want[0] {
				t.Fatalf("tsv: Δ has rank above T·k (σ = %v)", v)
			}
		}
		// Iso-C.
		sv := spectrum(t, sum, m, n)
		mean, nuc := 0.0, 0.0
		for _, v := range sv {
			nuc += v
		}
		mean = nuc / float64(rr)
		d := run("iso_c", Params{})
		flat := make([]float64, rr)
		for i := range flat {
			flat[i] = mean
		}
		check("iso_c", spectrum(t, d, m, n), flat)
		inner := 0.0
		for i, v := range d {
			inner += float64(v) * float64(sum[i])
		}
		if math.Abs(inner-mean*nuc) > 2e-5*mean*nuc {
			t.Fatalf("iso_c: ⟨Δ, Δ_TA⟩ = %v, want σ̄·‖Δ_TA‖_* = %v", inner, mean*nuc)
		}
		// Iso-CTS: a flat spectrum of full rank.
		cts := spectrum(t, run("iso_cts", DefaultParams("iso_cts")), m, n)
		flat = make([]float64, rr)
		for i := range flat {
			flat[i] = cts[0]
		}
		check("iso_cts", cts, flat)
	}
}

// TestSubspaceTransposedIsTranspose: a Conv1D-style tensor (stored (in,
// out), flagged) merges bit for bit like its (out, in) transpose.
func TestSubspaceTransposedIsTranspose(t *testing.T) {
	const in, out = 30, 45
	r := rand.New(rand.NewPCG(3, 5))
	base, m1, m2 := randMat(r, in, out, 1), randMat(r, in, out, 1), randMat(r, in, out, 1)
	for _, method := range []string{"tsv", "iso_c", "iso_cts"} {
		p := DefaultParams(method)
		stored := shaped("h.0.attn.c_attn.weight", []int{in, out}, base, m1, m2)
		stored[0].Transposed = true
		plain := shaped("h.0.attn.c_attn.weight", []int{out, in}, transposeF32(base, in, out), transposeF32(m1, in, out), transposeF32(m2, in, out))
		if err := Run(method, p, stored); err != nil {
			t.Fatal(err)
		}
		if err := Run(method, p, plain); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(stored[0].Out.F32, transposeF32(plain[0].Out.F32, out, in)) {
			t.Fatalf("%s: flagged tensor differs from its transpose", method)
		}
	}
}

// TestSubspaceThreadsLargeMatrix: a matrix large enough for the parallel
// paths of the Gram matrix, the GEMM and the eigensolver's rotations gives
// the same bits on 1, 2 and 3 threads (the generic thread test covers the
// small shapes and every dtype).
func TestSubspaceThreadsLargeMatrix(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	const rows, cols = 310, 270
	base := randMat(r, rows, cols, 1)
	models := [][]float32{randMat(r, rows, cols, 1), randMat(r, rows, cols, 1)}
	for _, method := range []string{"tsv", "iso_c", "iso_cts"} {
		var ref []float32
		for _, th := range []int{1, 2, 3} {
			ts := shaped("w", []int{rows, cols}, base, models...)
			pp := DefaultParams(method)
			pp.Pool = parallel.Pool{Threads: th}
			if err := Run(method, pp, ts); err != nil {
				t.Fatal(err)
			}
			if ref == nil {
				ref = ts[0].Out.F32
				continue
			}
			if !slices.Equal(ts[0].Out.F32, ref) {
				t.Fatalf("%s: %d threads differ from 1 thread", method, th)
			}
		}
	}
}

// TestSubspaceZeroTaskVectors: all-zero task vectors (or some of them)
// give no NaN: the base itself, or the other tasks' merge.
func TestSubspaceZeroTaskVectors(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 9))
	base := randMat(r, 12, 8, 1)
	other := randMat(r, 12, 8, 1)
	for _, method := range []string{"tsv", "iso_c", "iso_cts"} {
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
			vec := func(x []float32) tensor.Vec {
				v := tensor.Alloc(len(x), dt)
				v.Store(x, 0)
				return v
			}
			ts := []Tensor{{Name: "w", Shape: []int{12, 8}, Base: vec(base), Models: []tensor.Vec{vec(base), vec(base)}, Out: tensor.Alloc(96, tensor.F32)}}
			if err := Run(method, DefaultParams(method), ts); err != nil {
				t.Fatal(err)
			}
			b := make([]float32, 96)
			vec(base).Load(b, 0)
			if !slices.Equal(ts[0].Out.F32, b) {
				t.Fatalf("%s %v: zero task vectors changed the base", method, dt)
			}
			// One zero task among two: finite, and not the base.
			ts[0].Models[1] = vec(other)
			if err := Run(method, DefaultParams(method), ts); err != nil {
				t.Fatal(err)
			}
			if !allFinite(ts[0].Out.F32) || slices.Equal(ts[0].Out.F32, b) {
				t.Fatalf("%s %v: one zero task vector: %v", method, dt, ts[0].Out.F32[:4])
			}
		}
	}
}

func allFinite(x []float32) bool {
	for _, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return false
		}
	}
	return true
}

func TestIsoCTSSizes(t *testing.T) {
	for _, tc := range []struct {
		r, T        int
		frac        float64
		common, per int
		why         string
	}{
		{768, 8, 0.8, 616, 19, "⌊614.4⌋ = 614; round(154/8 = 19.25) = 19"},
		{384, 5, 0.8, 309, 15, "307; round(77/5 = 15.4) = 15"},
		{10, 4, 0, 2, 2, "round(2.5) = 2, half to even"},
		{14, 4, 0, 2, 3, "round(3.5) = 4 > ⌊14/4⌋: capped at 3"},
		{10, 3, 0.8, 7, 1, "round(2/3) = 1"},
		{3, 8, 0.8, 3, 0, "round(1/8) = 0: no task-specific part"},
		{64, 2, 1, 64, 0, "fraction 1: all common"},
		{64, 2, 0, 0, 32, "fraction 0: all task-specific"},
	} {
		c, p := isoCTSSizes(tc.r, tc.T, tc.frac)
		if c != tc.common || p != tc.per {
			t.Errorf("r %d T %d f %v: (%d, %d), want (%d, %d): %s", tc.r, tc.T, tc.frac, c, p, tc.common, tc.per, tc.why)
		}
	}
}

func TestSubspaceDefaults(t *testing.T) {
	for _, m := range []string{"tsv", "iso_c", "iso_cts"} {
		p := DefaultParams(m)
		if p.Lambda != 1 || p.CommonSpaceFraction != 0.8 || p.Scope != ScopeTensor {
			t.Errorf("%s: %+v", m, p)
		}
	}
}

// TestIsoCTSLimits: with common_space_fraction 1 Iso-CTS is Iso-C (bit for
// bit: the same route); with one task it is Iso-C up to rounding.
func TestIsoCTSLimits(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	base, m1, m2 := randMat(r, 20, 14, 1), randMat(r, 20, 14, 1), randMat(r, 20, 14, 1)
	iso := shaped("w", []int{20, 14}, base, m1, m2)
	cts := shaped("w", []int{20, 14}, base, m1, m2)
	if err := Run("iso_c", Params{Lambda: 1}, iso); err != nil {
		t.Fatal(err)
	}
	if err := Run("iso_cts", Params{Lambda: 1, CommonSpaceFraction: 1}, cts); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(iso[0].Out.F32, cts[0].Out.F32) {
		t.Fatal("iso_cts with fraction 1 differs from iso_c")
	}
	iso1 := shaped("w", []int{20, 14}, base, m1)
	cts1 := shaped("w", []int{20, 14}, base, m1)
	if err := Run("iso_c", Params{Lambda: 1}, iso1); err != nil {
		t.Fatal(err)
	}
	if err := Run("iso_cts", Params{Lambda: 1, CommonSpaceFraction: 0.6}, cts1); err != nil {
		t.Fatal(err)
	}
	if !near(iso1[0].Out.F32, cts1[0].Out.F32, 1e-5) {
		t.Fatal("iso_cts with one task differs from iso_c")
	}
}

func TestSubspaceBadInput(t *testing.T) {
	nan := float32(math.NaN())
	cases := []struct {
		name   string
		method string
		p      Params
		ts     []Tensor
		want   string
	}{
		{"fraction > 1", "iso_cts", Params{Lambda: 1, CommonSpaceFraction: 1.5}, mat2(2, 2, []float32{1, 0, 0, 1}), "common_space_fraction must lie in [0, 1], got 1.5"},
		{"fraction NaN", "iso_cts", Params{Lambda: 1, CommonSpaceFraction: math.NaN()}, mat2(2, 2, []float32{1, 0, 0, 1}), "common_space_fraction must be a finite number, got NaN"},
		{"lambda NaN", "tsv", Params{Lambda: math.NaN()}, mat2(2, 2, []float32{1, 0, 0, 1}), "lambda must be a finite number, got NaN"},
		{"NaN in a matrix", "tsv", Params{Lambda: 1}, shaped("enc.w", []int{2, 2}, make([]float32, 4), []float32{1, 0, 0, 1}, []float32{1, nan, 0, 1}), `tensor "enc.w": model 1 has NaN at flat index 1`},
		{"Inf in a bias", "iso_c", Params{Lambda: 1}, shaped("enc.b", []int{2}, []float32{0, float32(math.Inf(1))}, []float32{1, 0}), `tensor "enc.b": the base model has +Inf at flat index 1`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(tc.method, tc.p, tc.ts)
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrInput containing %q", err, tc.want)
			}
		})
	}
	// The first failing tensor is reported, as by the other methods.
	ts := append(shaped("a.b", []int{2}, []float32{0, 0}, []float32{nan, 0}), mat2(2, 2, []float32{nan, 0, 0, 1})...)
	errTA := Run("task_arithmetic", Params{Lambda: 1}, slices.Clone(ts))
	errIso := Run("iso_c", Params{Lambda: 1}, slices.Clone(ts))
	if errTA == nil || errIso == nil || errTA.Error() != errIso.Error() {
		t.Fatalf("iso_c: %v; task_arithmetic: %v", errIso, errTA)
	}
}

// TestSubspaceMergerReleases: a streaming Merger drops each matrix's Δ
// once the tensor is merged and recomputes it when asked again, with the
// same bits.
func TestSubspaceMergerReleases(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 3))
	ts := randomMerge(r, tensor.F32, [][]int{{30, 20}, {20}, {25, 40}}, 3)
	for _, method := range []string{"tsv", "iso_c", "iso_cts"} {
		m, err := NewMerger(method, DefaultParams(method), ts)
		if err != nil {
			t.Fatal(err)
		}
		out := tensor.Alloc(600, tensor.F32)
		if err := m.Tensor(0, out); err != nil {
			t.Fatal(err)
		}
		first := slices.Clone(out.F32)
		if m.e.sub.delta[0] != nil || m.e.prepared[0] {
			t.Fatalf("%s: Δ of tensor 0 still held after it was merged", method)
		}
		if err := m.Tensor(0, out); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(first, out.F32) {
			t.Fatalf("%s: merging tensor 0 again gives other bits", method)
		}
	}
}

// BenchmarkSubspace: one BERT-size layer's matrices (768×768 and
// 3072×768) or a MiniLM's (384), three task vectors, per method.
func BenchmarkSubspace(b *testing.B) {
	for _, d := range []int{384, 768} {
		r := rand.New(rand.NewPCG(1, 1))
		var ts []Tensor
		for i, sh := range [][]int{{d, d}, {4 * d, d}} {
			base := randMat(r, sh[0], sh[1], 0.05)
			ms := make([][]float32, 3)
			for m := range ms {
				ms[m] = randMat(r, sh[0], sh[1], 0.002)
				for k := range ms[m] {
					ms[m][k] += base[k]
				}
			}
			ts = append(ts, shaped(string(rune('a'+i)), sh, base, ms...)...)
		}
		for _, method := range []string{"iso_c", "tsv", "iso_cts"} {
			b.Run(method+"/"+strconv.Itoa(d), func(b *testing.B) {
				for b.Loop() {
					if err := Run(method, DefaultParams(method), ts); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
