package linalg

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"gonum.org/v1/gonum/blas"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// errEigNoConvergence reports that the implicit QL iteration of [SymEig]
// did not converge (30·n iterations without deflation).
var errEigNoConvergence = errors.New("linalg: symmetric eigensolver did not converge")

// SymEig computes every eigenvalue and eigenvector of the n×n symmetric
// float64 matrix a (row-major; only its upper triangle is read, a is not
// modified). It returns the eigenvalues in descending order and the
// eigenvectors as the rows of an n×n row-major matrix z: row i is the unit
// eigenvector of vals[i], so that a = zᵀ·diag(vals)·z.
//
// Method (Golub & Van Loan, "Matrix Computations", 4th ed., §8.3): a
// Householder reduction to tridiagonal form a = Q·T·Qᵀ (LAPACK dsytrd and
// dorgtr, gonum's native implementation), then the implicit QL iteration
// with Wilkinson's shift on T, its Givens rotations accumulated into the
// rows of Qᵀ. Rotations act on two contiguous rows at a time (gonum's
// dsteqr rotates strided columns of a row-major matrix, several times
// slower); those of one QL sweep are applied together, in parallel over
// blocks of columns when the sweep is long. Every entry sees the same
// sequence of rotations whatever the thread count, so the result is
// bit-identical for any number of threads. Ties between equal eigenvalues
// keep the order in which the iteration found them.
//
// Accuracy: eigenvalues to about ε·‖a‖ in absolute terms, eigenvectors
// orthonormal to about n·ε (ε = 2⁻⁵²), as for LAPACK's dsyev. Cost:
// about 4/3·n³ flops for the reduction, 4/3·n³ to form Q and roughly
// 3·n³ to 5·n³ for the rotations; O(n²) memory. Errors: n < 0, len(a) <
// n·n, a NaN or ±Inf entry, or no convergence.
func SymEig(pool parallel.Pool, a []float64, n int) (vals, z []float64, err error) {
	if n < 0 || len(a) < n*n {
		return nil, nil, fmt.Errorf("symmetric eigendecomposition of a %d×%d matrix with %d entries: %w", n, n, len(a), errShape)
	}
	for i := 0; i < n; i++ {
		for j := i; j < n; j++ {
			if v := a[i*n+j]; math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, nil, fmt.Errorf("symmetric eigendecomposition: non-finite entry %v at (%d, %d)", v, i, j)
			}
		}
	}
	if n == 0 {
		return []float64{}, []float64{}, nil
	}
	q := make([]float64, n*n)
	copy(q, a[:n*n])
	d := make([]float64, n)
	e := make([]float64, n) // e[n−1] stays 0
	var h householder
	h.tau = grow(h.tau, max(n-1, 1))
	h.ensureWork(func(w []float64) { lapack.Dsytrd(blas.Upper, n, q, n, d, e, h.tau, w, -1) })
	lapack.Dsytrd(blas.Upper, n, q, n, d, e, h.tau, h.work, len(h.work))
	h.ensureWork(func(w []float64) { lapack.Dorgtr(blas.Upper, n, q, n, h.tau, w, -1) })
	lapack.Dorgtr(blas.Upper, n, q, n, h.tau, h.work, len(h.work))
	// The eigenvectors of a are Q times those of T: keep Qᵀ, whose rows
	// the rotations combine.
	zt := make([]float64, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			zt[j*n+i] = q[i*n+j]
		}
	}
	if err := tridiagQL(pool, d, e, zt, n); err != nil {
		return nil, nil, fmt.Errorf("symmetric eigendecomposition of a %d×%d matrix: %w", n, n, err)
	}
	// Descending order; equal values keep their order.
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(x, y int) bool { return d[idx[x]] > d[idx[y]] })
	vals = make([]float64, n)
	z = q // reuse: Q is no longer needed
	for i, k := range idx {
		vals[i] = d[k]
		copy(z[i*n:(i+1)*n], zt[k*n:(k+1)*n])
	}
	return vals, z, nil
}

// givens is one plane rotation of a QL sweep, acting on rows i and i+1.
type givens struct {
	i    int
	c, s float64
}

// tridiagQL diagonalises the symmetric tridiagonal matrix with diagonal d
// and off-diagonal e (e[i] couples i and i+1; e[n−1] is 0) by the implicit
// QL iteration with Wilkinson's shift (Golub & Van Loan, §8.3.3, run
// bottom-up as the QL variant), overwriting d with the eigenvalues
// (unsorted) and rotating the rows of zt (n×n) along: on return row i of zt
// is the input rows' combination belonging to d[i].
func tridiagQL(pool parallel.Pool, d, e, zt []float64, n int) error {
	const eps = 0x1p-52
	var sweep []givens
	for l := 0; l < n; l++ {
		for iter := 0; ; iter++ {
			// The first negligible off-diagonal entry at or after l ends
			// the unreduced block [l, m].
			m := l
			for ; m < n-1; m++ {
				if math.Abs(e[m]) <= eps*(math.Abs(d[m])+math.Abs(d[m+1])) {
					break
				}
			}
			if m == l {
				break
			}
			if iter == 30*n {
				return errEigNoConvergence
			}
			// Wilkinson's shift: the eigenvalue of the leading 2×2 block
			// nearer to d[l], folded into the first rotation's g.
			g := (d[l+1] - d[l]) / (2 * e[l])
			r := math.Hypot(g, 1)
			g = d[m] - d[l] + e[l]/(g+math.Copysign(r, g))
			s, c, p := 1.0, 1.0, 0.0
			sweep = sweep[:0]
			deflated := false
			for i := m - 1; i >= l; i-- {
				f := s * e[i]
				b := c * e[i]
				r = math.Hypot(f, g)
				e[i+1] = r
				if r == 0 {
					// Underflow: the block splits at i+1; restart there.
					d[i+1] -= p
					e[m] = 0
					deflated = true
					break
				}
				s, c = f/r, g/r
				g = d[i+1] - p
				r = (d[i]-g)*s + 2*c*b
				p = s * r
				d[i+1] = g + p
				g = c*r - b
				sweep = append(sweep, givens{i: i, c: c, s: s})
			}
			rotateRows(pool, zt, n, sweep)
			if !deflated {
				d[l] -= p
				e[l] = g
				e[m] = 0
			}
		}
	}
	return nil
}

// rotateRowsBlock is the number of columns one task of rotateRows takes
// when a sweep is long enough to share out.
const rotateRowsBlock = 128

// rotateRows applies the rotations of one sweep, in order, to the rows of
// zt (n columns): for rotation (i, c, s), row_{i+1} ← s·row_i + c·row_{i+1}
// and row_i ← c·row_i − s·row_{i+1} (old values on the right). Columns
// are independent, so blocks of them run in parallel when the sweep is
// long; every entry sees the same operations either way.
func rotateRows(pool parallel.Pool, zt []float64, n int, sweep []givens) {
	if len(sweep) == 0 {
		return
	}
	apply := func(lo, hi int) {
		for _, g := range sweep {
			rotKernel(zt[g.i*n+lo:g.i*n+hi], zt[(g.i+1)*n+lo:(g.i+1)*n+hi], g.c, g.s)
		}
	}
	blocks := (n + rotateRowsBlock - 1) / rotateRowsBlock
	if blocks < 2 || len(sweep)*n < 1<<16 || pool.Size() < 2 {
		apply(0, n)
		return
	}
	pool.For(blocks, func(_, b int) {
		apply(b*rotateRowsBlock, min((b+1)*rotateRowsBlock, n))
	})
}

// rotGo rotates the pair of rows (x, y): y ← s·x + c·y, x ← c·x − s·y (old
// values on the right), each product and sum rounded on its own. The vector
// kernels (rotate_simd_amd64.go) do exactly this on several lanes at once.
func rotGo(x, y []float64, c, s float64) {
	y = y[:len(x)]
	for k, xv := range x {
		yv := y[k]
		// Conversions keep the products from fusing with the sums.
		y[k] = float64(s*xv) + float64(c*yv)
		x[k] = float64(c*xv) - float64(s*yv)
	}
}
