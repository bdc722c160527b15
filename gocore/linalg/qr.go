package linalg

import (
	"fmt"

	"gonum.org/v1/gonum/lapack/gonum"
)

// lapack is gonum's native (pure Go, row-major) LAPACK implementation.
var lapack gonum.Implementation

// householder holds reusable float64 workspace for Householder QR/LQ
// factorisations of float32 panels. The zero value is ready to use.
type householder struct {
	buf, tau, work []float64
}

// grow returns s resliced to n elements, reallocating when cap(s) < n.
func grow(s []float64, n int) []float64 {
	if cap(s) < n {
		return make([]float64, n)
	}
	return s[:n]
}

// ensureWork grows h.work to at least the size reported by a LAPACK
// workspace query (query stores the optimum in its work[0]).
func (h *householder) ensureWork(query func(work []float64)) {
	var opt [1]float64
	query(opt[:])
	h.work = grow(h.work, max(int(opt[0]), 1))
}

// orthoRows overwrites the r×c row-major panel a (r <= c) with a matrix Q
// whose rows are orthonormal and satisfy a = L·Q for a lower-triangular L
// (Householder LQ, LAPACK dgelqf + dorglq, computed in float64). Hence the
// row space of a is contained in the row space of Q, also when a is rank
// deficient or zero. Cost O(r²·c).
func (h *householder) orthoRows(a []float32, r, c int) {
	if r == 0 || c == 0 {
		return
	}
	h.buf = grow(h.buf, r*c)
	h.tau = grow(h.tau, r)
	to64(h.buf, a[:r*c])
	h.ensureWork(func(w []float64) { lapack.Dgelqf(r, c, h.buf, c, h.tau, w, -1) })
	lapack.Dgelqf(r, c, h.buf, c, h.tau, h.work, len(h.work))
	h.ensureWork(func(w []float64) { lapack.Dorglq(r, c, r, h.buf, c, h.tau, w, -1) })
	lapack.Dorglq(r, c, r, h.buf, c, h.tau, h.work, len(h.work))
	to32(a, h.buf)
}

// orthoCols overwrites the r×c row-major panel a (r >= c) with a matrix Q
// whose columns are orthonormal and satisfy a = Q·R for an upper-triangular R
// (Householder QR, LAPACK dgeqrf + dorgqr, computed in float64). Cost O(r·c²).
func (h *householder) orthoCols(a []float32, r, c int) {
	if r == 0 || c == 0 {
		return
	}
	h.buf = grow(h.buf, r*c)
	h.tau = grow(h.tau, c)
	to64(h.buf, a[:r*c])
	h.ensureWork(func(w []float64) { lapack.Dgeqrf(r, c, h.buf, c, h.tau, w, -1) })
	lapack.Dgeqrf(r, c, h.buf, c, h.tau, h.work, len(h.work))
	h.ensureWork(func(w []float64) { lapack.Dorgqr(r, c, c, h.buf, c, h.tau, w, -1) })
	lapack.Dorgqr(r, c, c, h.buf, c, h.tau, h.work, len(h.work))
	to32(a, h.buf)
}

// OrthonormalizeCols returns a new Rows×Cols matrix Q with orthonormal
// columns (QᵀQ = I up to float32 rounding) such that a = Q·R for some
// upper-triangular R: the first j columns of Q span the first j columns of a
// when those are independent, and range(a) ⊆ range(Q) always (also for rank
// deficient or zero a, where Q is completed with other orthonormal
// directions). a is not modified.
//
// It requires a.Rows >= a.Cols. Householder QR (LAPACK dgeqrf + dorgqr via
// gonum's native implementation) in float64; cost O(Rows·Cols²) flops plus
// O(Rows·Cols) conversion.
func OrthonormalizeCols(a Matrix) (Matrix, error) {
	if err := a.check("a"); err != nil {
		return Matrix{}, fmt.Errorf("orthonormalize columns: %w", err)
	}
	if a.Rows < a.Cols {
		return Matrix{}, fmt.Errorf("orthonormalize columns of a %d×%d matrix (needs Rows >= Cols): %w", a.Rows, a.Cols, errShape)
	}
	q := Matrix{Rows: a.Rows, Cols: a.Cols, Data: append([]float32(nil), a.Data...)}
	var h householder
	h.orthoCols(q.Data, q.Rows, q.Cols)
	return q, nil
}

// OrthonormalizeRows returns a new Rows×Cols matrix Q with orthonormal rows
// (Q·Qᵀ = I up to float32 rounding) such that a = L·Q for some
// lower-triangular L; the row space of a is contained in that of Q. It is
// [OrthonormalizeCols] applied to aᵀ, without forming the transpose.
// a is not modified.
//
// It requires a.Rows <= a.Cols. Householder LQ (LAPACK dgelqf + dorglq) in
// float64; cost O(Rows²·Cols).
func OrthonormalizeRows(a Matrix) (Matrix, error) {
	if err := a.check("a"); err != nil {
		return Matrix{}, fmt.Errorf("orthonormalize rows: %w", err)
	}
	if a.Rows > a.Cols {
		return Matrix{}, fmt.Errorf("orthonormalize rows of a %d×%d matrix (needs Rows <= Cols): %w", a.Rows, a.Cols, errShape)
	}
	q := Matrix{Rows: a.Rows, Cols: a.Cols, Data: append([]float32(nil), a.Data...)}
	var h householder
	h.orthoRows(q.Data, q.Rows, q.Cols)
	return q, nil
}
