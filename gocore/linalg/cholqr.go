package linalg

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// This file holds the orthonormalisation RandomizedSVD uses between its
// products: CholeskyQR2 (Fukaya, Nakatsukasa, Yanagisawa & Yamamoto,
// "CholeskyQR2: a simple and communication-avoiding algorithm for computing
// a tall-skinny QR factorization", 2014) in float64 on two small kernels,
// instead of the unblocked Householder LQ of gonum's dgelqf (level-2, one
// pass over the panel per reflector).
//
// For an r×c panel X (r ≤ c, one basis vector per row):
//
//	G₁ = X·Xᵀ,  G₁ = L₁·L₁ᵀ (Cholesky),  Q₁ = L₁⁻¹·X,
//	G₂ = Q₁·Q₁ᵀ, G₂ = L₂·L₂ᵀ,             Q  = L₂⁻¹·Q₁,
//
// so X = (L₁·L₂)·Q with L₁·L₂ lower triangular: the contract of
// householder.orthoRows (the row space of X lies in that of Q). One pass
// leaves ‖Q₁·Q₁ᵀ − I‖ ≈ u·cond(X)² (u = 2⁻⁵³); the second brings it to
// O(u) whenever the first left Q₁ well conditioned, which G₂ shows: the
// method is used only when every pivot of the first Cholesky keeps at least
// cholPivotTol of its diagonal entry and every row of G₂ − I has absolute
// sum ≤ 1/2 (so cond(Q₁) ≤ √3). Otherwise — a rank-deficient, zero or too
// ill-conditioned panel — the caller falls back to Householder, whose
// results do not depend on conditioning. The bases of the power iterations
// may keep the first pass alone when its factor is well conditioned
// (onePassCond); RandomizedSVD's last basis always gets both.
//
// The two O(r²·c) steps run on kernels (f64Kern): gram, a 4×4 block of
// dot products carried lane-wise (lane c of 8 sums the entries c, c+8, …
// as one chain of fused multiply-adds, the 8 lanes then added in a fixed
// tree, reduce8), and apply, a 4×32 tile of a product T·Y, each element one
// fma chain over T's columns in order. The assembly kernels (AVX-512,
// f64kern_amd64.s) and their Go twins (gramGo, applyGo: math.FMA is the
// correctly rounded fused multiply-add) give the same bits, and so does
// every thread count (the tasks split output blocks, never a chain).
// Without AVX-512 (or with -tags purego) RandomizedSVD keeps Householder:
// the Go twins on scalar FMAs would be slower than it.

// cholPivotTol is the smallest fraction of its diagonal entry G₁[i][i] a
// pivot of the first Cholesky may keep (the squared sine of the angle
// between row i and the span of the rows before it): below it the first
// pass would leave Q₁ too far from orthonormal.
const cholPivotTol = 1e-14

// Kernel shapes: gram's 4×4 block of 8-lane sums, apply's 4×32 tile.
const (
	gramLanes = 4 * 4 * 8
	applyNR   = 32
)

// f64Kern is a pair of float64 kernels of the CholeskyQR2 (see the top of
// this file for the operation each computes).
type f64Kern struct {
	name string
	// gram stores in out[(4i+j)*8+c] (i, j < 4, c < 8) the chain
	// Σ_{t ≡ c mod 8, t < n&^7} x[i*ld+t]·y[j*ld+t] (fma in t order from +0).
	gram func(n int, x, y []float64, ld int, out []float64)
	// apply stores in out[r*ldo+c] (r < 4, c < 32) the chain
	// Σ_{j<kk} t[r*ldt+j]·y[j*ldy+c] (fma in j order from +0).
	apply func(kk int, t []float64, ldt int, y []float64, ldy int, out []float64, ldo int)
}

// goF64Kern holds the Go twins, the reference of the assembly kernels.
var goF64Kern = f64Kern{name: "go", gram: gramGo, apply: applyGo}

// cholKern is the kernel pair of the CholeskyQR2; cholFast reports
// whether it is an assembly pair, i.e. whether RandomizedSVD uses the
// CholeskyQR2 at all (tests swap both).
var cholKern, cholFast = bestF64Kern()

// bestF64Kern returns the assembly kernels when the CPU runs them, else
// the Go twins and false.
func bestF64Kern() (f64Kern, bool) {
	if k, ok := asmF64Kern(); ok {
		return k, true
	}
	return goF64Kern, false
}

// gramGo is the scalar twin of the gram kernel.
func gramGo(n int, x, y []float64, ld int, out []float64) {
	n &^= 7
	out = out[:gramLanes]
	for i := 0; i < 4; i++ {
		xi := x[i*ld : i*ld+n]
		for j := 0; j < 4; j++ {
			yj := y[j*ld : j*ld+n]
			for c := 0; c < 8; c++ {
				acc := 0.0
				for t := c; t < n; t += 8 {
					acc = math.FMA(xi[t], yj[t], acc)
				}
				out[(4*i+j)*8+c] = acc
			}
		}
	}
}

// applyGo is the scalar twin of the apply kernel.
func applyGo(kk int, t []float64, ldt int, y []float64, ldy int, out []float64, ldo int) {
	for r := 0; r < 4; r++ {
		o := out[r*ldo : r*ldo+applyNR]
		for c := range o {
			acc := 0.0
			for j := 0; j < kk; j++ {
				acc = math.FMA(t[r*ldt+j], y[j*ldy+c], acc)
			}
			o[c] = acc
		}
	}
}

// reduce8 adds the 8 lane sums of a gram entry in a fixed tree.
func reduce8(v []float64) float64 {
	v = v[:8]
	return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

// roundUp returns x rounded up to a multiple of m.
func roundUp(x, m int) int { return (x + m - 1) / m * m }

// cholQR is the reusable float64 workspace of the CholeskyQR2. A panel of
// r rows and c columns is held with rp = roundUp(r, 4) rows of ld =
// roundUp(c, applyNR) values, the padding zero; the small matrices are
// rp×rp. The zero value (with kern set) is ready to use.
type cholQR struct {
	kern         f64Kern
	x, y         []float64 // panels: X, then Q, and Q₁
	g, l1, l2, t []float64 // rp×rp
	lanes        []float64 // per-worker gram output
	r, c, rp, ld int       // shape of the last factor call
}

// rows overwrites the r×c float32 panel a (r <= c) with Q of the
// CholeskyQR2 (orthonormal rows, a = L·Q for a lower-triangular L) and
// returns true, or returns false and leaves a unchanged when the panel is
// too ill-conditioned for it (see the top of this file).
//
// With onePass, a first pass whose factor L₁ is well conditioned
// (‖L₁‖_F·‖L₁⁻¹‖_F ≤ onePassCond, so ‖Q₁·Q₁ᵀ − I‖ stays far below 1) is
// kept without the second: for the bases of the power iterations, which
// only need to span the right space with a well-conditioned basis.
func (w *cholQR) rows(pool parallel.Pool, a []float32, r, c int, onePass bool) bool {
	if !w.factor(pool, a, r, c, onePass) {
		return false
	}
	w.narrowQ(a)
	return true
}

// narrowQ stores the r×c Q of the last factor call in a (float32).
func (w *cholQR) narrowQ(a []float32) {
	for i := 0; i < w.r; i++ {
		to32(a[i*w.c:(i+1)*w.c], w.x[i*w.ld:i*w.ld+w.c])
	}
}

// factor runs the CholeskyQR2 of the r×c float32 panel a: on success Q is
// in w.x (padded) and L₁, L₂ in w.l1, w.l2 (a = L₁·L₂·Q); false when the
// panel is too ill-conditioned. a is not modified.
func (w *cholQR) factor(pool parallel.Pool, a []float32, r, c int, onePass bool) bool {
	if r == 0 || c == 0 || r > c {
		return false
	}
	w.load(a, r, c)
	rp := w.rp
	w.gram(pool, w.x)
	if !cholLower(w.g, r, rp, w.l1, cholPivotTol) {
		return false
	}
	invLower(w.l1, r, rp, w.t)
	w.applyLower(pool, w.t, w.x, w.y) // Q₁
	if onePass && frobenius(w.l1)*frobenius(w.t) <= onePassCond {
		w.x, w.y = w.y, w.x
		return true
	}
	w.gram(pool, w.y)
	for i := 0; i < r; i++ {
		s := 0.0
		for j, v := range w.g[i*rp : i*rp+r] {
			if i == j {
				v--
			}
			s += math.Abs(v)
		}
		if !(s <= 0.5) { // also NaN
			return false
		}
	}
	if !cholLower(w.g, r, rp, w.l2, 0.25) {
		return false
	}
	invLower(w.l2, r, rp, w.t)
	w.applyLower(pool, w.t, w.y, w.x) // Q
	return true
}

// onePassCond is the largest bound ‖L₁‖_F·‖L₁⁻¹‖_F on cond(X) for which
// rows(…, onePass) keeps the first pass: its Q₁ is then orthonormal to
// about u·cond² (u = 2⁻⁵³, times factors of the panel's size), far
// below 1.
const onePassCond = 1e4

// frobenius returns the Frobenius norm of x.
func frobenius(x []float64) float64 {
	s := 0.0
	for _, v := range x {
		s += v * v
	}
	return math.Sqrt(s)
}

// load widens the r×c float32 panel a into w.x (padded, see cholQR) and
// sets the shape fields and the sizes of the buffers.
func (w *cholQR) load(a []float32, r, c int) {
	rp, ld := roundUp(r, 4), roundUp(c, applyNR)
	w.r, w.c, w.rp, w.ld = r, c, rp, ld
	w.x = grow(w.x, rp*ld)
	w.y = grow(w.y, rp*ld)
	for _, p := range []*[]float64{&w.g, &w.l1, &w.l2, &w.t} {
		*p = grow(*p, rp*rp)
	}
	for i := 0; i < r; i++ {
		row := w.x[i*ld : (i+1)*ld]
		to64(row, a[i*c:(i+1)*c])
		clear(row[c:])
	}
	clear(w.x[r*ld:])
}

// gram stores the rp×rp Gram matrix x·xᵀ of the padded panel x in w.g,
// one task per 4×4 block of its lower triangle (mirrored above).
func (w *cholQR) gram(pool parallel.Pool, x []float64) {
	rp, ld := w.rp, w.ld
	nb := rp / 4
	pairs := nb * (nb + 1) / 2
	w.lanes = grow(w.lanes, pool.Workers(pairs)*gramLanes)
	g := w.g
	pool.For(pairs, func(worker, p int) {
		bi := int((math.Sqrt(float64(8*p+1)) - 1) / 2)
		for bi*(bi+1)/2 > p {
			bi--
		}
		for (bi+1)*(bi+2)/2 <= p {
			bi++
		}
		bj := p - bi*(bi+1)/2
		out := w.lanes[worker*gramLanes : (worker+1)*gramLanes]
		w.kern.gram(ld, x[4*bi*ld:], x[4*bj*ld:], ld, out)
		for i := 0; i < 4; i++ {
			for j := 0; j < 4; j++ {
				v := reduce8(out[(4*i+j)*8:])
				g[(4*bi+i)*rp+4*bj+j] = v
				g[(4*bj+j)*rp+4*bi+i] = v
			}
		}
	})
}

// applyLower computes out = t·y for the rp×rp lower-triangular t (rows
// beyond r zero) and the padded panel y: the tile of rows i0…i0+3 runs
// over t's first i0+4 columns only (the rest are zero).
func (w *cholQR) applyLower(pool parallel.Pool, t, y, out []float64) {
	w.apply(pool, w.rp, func(i0 int) int { return min(i0+4, w.rp) }, t, w.rp, y, out)
}

// applyCols is the column width of an apply task (a multiple of applyNR).
const applyCols = 8 * applyNR

// apply computes the first rows (a multiple of 4) rows of out = t·y
// (stride w.ld, t's stride ldt), tile rows i0…i0+3 over the first kk(i0)
// columns of t; one task per 4 rows and applyCols columns.
func (w *cholQR) apply(pool parallel.Pool, rows int, kk func(i0 int) int, t []float64, ldt int, y, out []float64) {
	ld := w.ld
	groups := (ld + applyCols - 1) / applyCols
	pool.For(rows/4*groups, func(_, task int) {
		i0 := task / groups * 4
		c0 := task % groups * applyCols
		c1 := min(c0+applyCols, ld)
		n := kk(i0)
		for c := c0; c < c1; c += applyNR {
			w.kern.apply(n, t[i0*ldt:], ldt, y[c:], ld, out[i0*ld+c:], ld)
		}
	})
}

// cholLower stores in l (stride ld, cleared first) the lower-triangular
// Cholesky factor of the leading r×r block of the symmetric g (stride
// ld) and returns true, or false when a pivot is not above tol times its
// diagonal entry of g (or is not finite): g not numerically positive
// definite enough.
func cholLower(g []float64, r, ld int, l []float64, tol float64) bool {
	clear(l)
	for i := 0; i < r; i++ {
		li := l[i*ld : i*ld+i+1]
		for j := 0; j < i; j++ {
			li[j] = (g[i*ld+j] - dot4(li[:j], l[j*ld:j*ld+j])) / l[j*ld+j]
		}
		s := g[i*ld+i] - dot4(li[:i], li[:i])
		if !(s > tol*g[i*ld+i]) || math.IsInf(s, 0) {
			return false
		}
		li[i] = math.Sqrt(s)
	}
	return true
}

// dot4 returns Σ x[p]·y[p] summed in four interleaved partial sums (a
// fixed order, not one long dependency chain).
func dot4(x, y []float64) float64 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float64
	n := len(x) &^ 3
	for p := 0; p < n; p += 4 {
		s0 += x[p] * y[p]
		s1 += x[p+1] * y[p+1]
		s2 += x[p+2] * y[p+2]
		s3 += x[p+3] * y[p+3]
	}
	for p := n; p < len(x); p++ {
		s0 += x[p] * y[p]
	}
	return (s0 + s1) + (s2 + s3)
}

// invLower stores in t (stride ld, cleared first) the inverse of the
// lower-triangular r×r l (stride ld, non-zero diagonal), column by column
// by forward substitution: column j solves L·x = e_j, x[i] = −(Σ_{j≤p<i}
// L[i][p]·x[p]) / L[i][i] for i > j, each sum a dot4 over contiguous
// values.
func invLower(l []float64, r, ld int, t []float64) {
	clear(t)
	x := make([]float64, r)
	for j := 0; j < r; j++ {
		x[j] = 1 / l[j*ld+j]
		t[j*ld+j] = x[j]
		for i := j + 1; i < r; i++ {
			x[i] = -dot4(l[i*ld+j:i*ld+i], x[j:i]) / l[i*ld+i]
			t[i*ld+j] = x[i]
		}
	}
}

// timesQ returns the k×c float32 product v·Q of the k×r float64 matrix v
// (stride ldv) and the Q of the last successful factor call, through the
// apply kernel (each element one fma chain over r, narrowed once).
func (w *cholQR) timesQ(pool parallel.Pool, v []float64, k, ldv int) Matrix {
	r, c, ld := w.r, w.c, w.ld
	kp := roundUp(k, 4)
	tv := make([]float64, kp*r)
	for i := 0; i < k; i++ {
		copy(tv[i*r:(i+1)*r], v[i*ldv:i*ldv+r])
	}
	out := make([]float64, kp*ld)
	w.apply(pool, kp, func(int) int { return r }, tv, r, w.x, out)
	m := NewMatrix(k, c)
	for i := 0; i < k; i++ {
		to32(m.Data[i*c:(i+1)*c], out[i*ld:i*ld+c])
	}
	return m
}
