package neuro

import (
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
	"gonum.org/v1/gonum/lapack"
	lapackgonum "gonum.org/v1/gonum/lapack/gonum"
)

// ZeroNorm is the norm below which a pre-trained row counts as zero: the
// split into parallel and orthogonal parts is skipped (s_t = 0, o_t = τ̂_t).
const ZeroNorm = 1e-12

// tieTol is the relative size below which an election sum counts as zero.
const tieTol = 1e-9

// CoordFloor is the size, relative to its direction's singular value,
// below which a task's coordinate counts as zero in the orthogonal TIES
// (an eigenvector entry of at most 1e-10): a task whose orthogonal part is
// zero, or orthogonal to a direction, has a zero coordinate there, which
// the eigendecomposition only reproduces to rounding error.
const CoordFloor = 1e-10

// Kernel merges neurons of T tasks. It holds scratch space, so one Kernel
// must not be used by two goroutines at once; it allocates nothing after
// NewKernel.
type Kernel struct {
	t     int
	gram  []float64   // (T+1)×(T+1) Gram of [w; τ̂_1; …; τ̂_T], upper triangle
	ortho []float64   // T×T Gram of the orthogonal parts, then its eigenvectors
	eig   []float64   // eigenvalues
	work  []float64   // Dsyev workspace
	s, a  []float64   // parallel coefficients, combination of the o_t
	col   []float64   // one eigenvector
	rows  [][]float32 // w followed by the task rows
	bs    []float32   // Row's nonzero task coefficients b_t
	act   [][]float32 // and their rows
}

// NewKernel returns a Kernel for T ≥ 1 tasks.
func NewKernel(T int) *Kernel {
	k := &Kernel{
		t:     T,
		gram:  make([]float64, (T+1)*(T+1)),
		ortho: make([]float64, T*T),
		eig:   make([]float64, T),
		s:     make([]float64, T),
		a:     make([]float64, T),
		col:   make([]float64, T),
		rows:  make([][]float32, T+1),
		bs:    make([]float32, T),
		act:   make([][]float32, T),
	}
	var q [1]float64
	lapackgonum.Implementation{}.Dsyev(lapack.EVCompute, blas.Upper, T, k.ortho, T, k.eig, q[:], -1)
	k.work = make([]float64, max(int(q[0]), 3*T))
	return k
}

// Split is the result of one neuron's decomposition and merge, before the
// scales are applied: out = w + λ₁·Par·w + λ₂·(Σ_t A[t]·τ̂_t − (Σ_t A[t]·S[t])·w).
type Split struct {
	// S are the parallel coefficients s_t, Par their TIES merge s̄.
	S   []float64
	Par float64
	// A are the coefficients of Δ⊥ = Σ_t A[t]·o_t.
	A []float64
}

// Decompose computes neuron w's split for the task rows taus (each len(w)
// long) with weights wts (len T): the parallel coefficients and their TIES
// merge, and the coefficients of the merged orthogonal part. The slices of
// the result are the Kernel's, valid until its next call.
func (k *Kernel) Decompose(w []float32, taus [][]float32, wts []float32) Split {
	T := k.t
	n1 := T + 1
	k.rows[0] = w
	copy(k.rows[1:], taus)
	if !grams(k.gram, k.rows) { // one pass, Dsdot's bits (gram.go)
		for i := range n1 {
			for j := i; j < n1; j++ {
				k.gram[i*n1+j] = dot64(k.rows[i], k.rows[j])
			}
		}
	}
	ww := k.gram[0]
	split := ww >= ZeroNorm*ZeroNorm
	for t := range T {
		k.s[t] = 0
		if split {
			k.s[t] = k.gram[1+t] / ww
		}
	}
	// Gram of o_t = τ̂_t − s_t·w: ⟨τ̂_t, τ̂_u⟩ − ⟨w, τ̂_t⟩⟨w, τ̂_u⟩/‖w‖².
	for t := range T {
		for u := t; u < T; u++ {
			g := k.gram[(1+t)*n1+1+u]
			if split {
				g -= k.gram[1+t] * k.gram[1+u] / ww
			}
			k.ortho[t*T+u] = g
			k.ortho[u*T+t] = g
		}
	}
	par := TIES(k.s, wts)
	// Eigenvectors u_j of O·Oᵀ are the columns of ortho (row-major).
	lapackgonum.Implementation{}.Dsyev(lapack.EVCompute, blas.Upper, T, k.ortho, T, k.eig, k.work, len(k.work))
	clear(k.a)
	for j := range T {
		for t := range T {
			c := k.ortho[t*T+j]
			if math.Abs(c) <= CoordFloor {
				c = 0
			}
			k.col[t] = c
		}
		m := TIES(k.col, wts)
		if m == 0 {
			continue
		}
		for t := range T {
			k.a[t] += m * k.col[t]
		}
	}
	return Split{S: k.s, Par: par, A: k.a}
}

// Row merges one neuron: out = w + λ₁·Δ∥ + λ₂·Δ⊥ with Δ∥ = s̄·w and
// Δ⊥ = Σ_t a_t·(τ̂_t − s_t·w) (see Decompose), computed in float32 as
// w + (c_w·w + Σ_t b_t·τ̂_t), c_w = λ₁·s̄ − λ₂·Σ_t a_t·s_t, b_t = λ₂·a_t.
// w, every task row and out have the same length; out must not alias them.
func (k *Kernel) Row(w []float32, taus [][]float32, wts []float32, lam1, lam2 float64, out []float32) {
	sp := k.Decompose(w, taus, wts)
	var sa float64
	for t, a := range sp.A {
		sa += a * sp.S[t]
	}
	cw := float32(lam1*sp.Par - lam2*sa)
	nb := 0
	for t, tau := range taus {
		if b := float32(lam2 * sp.A[t]); b != 0 {
			k.bs[nb], k.act[nb] = b, tau
			nb++
		}
	}
	combineRow(out[:len(w)], w, k.act[:nb], k.bs[:nb], cw)
	clear(k.act[:nb]) // no reference to the caller's rows
}

// Elementwise merges a 1-D tensor: out_j = w_j + λ₂·TIES_t(τ̂_t[j]).
// vals is scratch of length T.
func Elementwise(w []float32, taus [][]float32, wts []float32, lam2 float64, vals []float64, out []float32) {
	for j, x := range w {
		for t, tau := range taus {
			vals[t] = float64(tau[j])
		}
		out[j] = x + float32(lam2*TIES(vals, wts))
	}
}

// TIES merges scalars: γ = sign(Σ_t w_t·x_t); the result is
// Σ_A w_t·x_t / Σ_A w_t over A = {t : w_t·x_t ≠ 0 with sign γ}, and 0 when
// A is empty or |Σ_t w_t·x_t| ≤ 1e-9·Σ_t |w_t·x_t| (no sign wins).
func TIES(x []float64, w []float32) float64 {
	var sum, abs float64
	for t, v := range x {
		y := float64(w[t]) * v
		sum += y
		abs += math.Abs(y)
	}
	if math.Abs(sum) <= tieTol*abs {
		return 0
	}
	pos := sum > 0
	var num, den float64
	for t, v := range x {
		y := float64(w[t]) * v
		if (pos && y > 0) || (!pos && y < 0) {
			num += y
			den += float64(w[t])
		}
	}
	if den == 0 {
		return 0
	}
	return num / den
}

// dot64 is Σ x_i·y_i accumulated in float64 (gonum's Dsdot).
func dot64(x, y []float32) float64 {
	return gonum.Implementation{}.Dsdot(len(x), x, 1, y, 1)
}
