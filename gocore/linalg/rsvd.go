package linalg

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
	lapackpkg "gonum.org/v1/gonum/lapack"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// Defaults used by [RandomizedSVD] when the corresponding [Options] field is 0.
const (
	DefaultOversample = 10 // p in Halko et al. (2011), §4.2
	DefaultPowerIters = 2  // q in Halko et al. (2011), Algorithm 4.4
)

// pcgStream is the fixed second PCG word; the caller's seed is the first.
const pcgStream = 0x9e3779b97f4a7c15

// Options configures [RandomizedSVD].
type Options struct {
	// Rank is the target rank k (>= 1). Values above min(Rows, Cols) are
	// clamped to min(Rows, Cols).
	Rank int
	// Oversample is the number p of extra sketch columns. 0 selects
	// DefaultOversample; a negative value means no oversampling (p = 0).
	// The sketch width k+p is clamped to min(Rows, Cols).
	Oversample int
	// PowerIters is the number q of subspace (power) iterations. 0 selects
	// DefaultPowerIters; a negative value means none (q = 0).
	PowerIters int
	// Seed selects the Gaussian test matrix; equal seeds give bit-identical
	// results whatever GOMAXPROCS is.
	Seed uint64
	// Pool is the thread count of the products (zero value: the process
	// default); the result does not depend on it.
	Pool parallel.Pool
}

// resolved returns (k, l, q): target rank, sketch width and power
// iterations for an m×n input.
func (o Options) resolved(m, n int) (k, l, q int) {
	mn := min(m, n)
	k = min(o.Rank, mn)
	p := o.Oversample
	switch {
	case p == 0:
		p = DefaultOversample
	case p < 0:
		p = 0
	}
	q = o.PowerIters
	switch {
	case q == 0:
		q = DefaultPowerIters
	case q < 0:
		q = 0
	}
	return k, min(k+p, mn), q
}

// SVD is a truncated singular value decomposition A ≈ U·diag(S)·Vt of rank
// r = len(S).
type SVD struct {
	U  Matrix    // Rows×r, orthonormal columns (left singular vectors)
	S  []float32 // r singular values, non-negative, in descending order
	Vt Matrix    // r×Cols, orthonormal rows (right singular vectors, transposed)
}

// RandomizedSVD computes a rank-k truncated SVD of the m×n matrix a with the
// randomized range finder of Halko, Martinsson & Tropp (2011): a Gaussian
// test matrix Ω (n×l, l = k+p) drawn from PCG streams seeded by opt.Seed
// (one per column of Ω), Y = A·Ω, then q subspace iterations (Algorithm 4.4) with a
// re-orthonormalisation after every product by A and by Aᵀ, then
// (Algorithm 5.1) B = Qᵀ·A (l×n), whose SVD is obtained from an LQ
// factorisation B = L·Q_B followed by a dense SVD of the l×l factor L
// (both in float64, backward stable: no squaring of the spectrum as with an
// eigen-decomposition of B·Bᵀ). Finally U = Q·U_L and Vt = V_Lᵀ·Q_B.
//
// The orthonormalisations and the LQ factorisation of B are CholeskyQR2
// in float64 on AVX-512 kernels (cholqr.go) where the CPU has them and the
// panel is not too ill-conditioned for it (cond ≲ 10⁷, checked), else
// Householder (LAPACK dgelqf + dorglq, gonum's native implementation).
// The orthonormal bases are stored transposed (l×m and l×n, one basis vector
// per row), as both factorisations want them; the big products
// run on this package's own float32 GEMM (gemm.go), vectorised across the l
// basis vectors: FMA assembly kernels on amd64 (AVX-512 or AVX2), the
// portable kernels elsewhere or with -tags purego. The result is the same
// for every thread count; the assembly and the portable builds differ by
// the GEMM's rounding (bounded, see gemm.go).
//
// Each returned singular pair's sign is fixed so that the entry of largest
// magnitude of each column of U is positive (first one on ties).
//
// a is not modified and not retained. k = min(opt.Rank, m, n); see [Options]
// for the clamping and the defaults. The zero matrix yields S = 0 with
// orthonormal (arbitrary) U and Vt; rank-deficient input yields trailing
// singular values at rounding level. Errors: inconsistent shape, Rank < 1,
// an empty matrix, a NaN/Inf entry, or a non-converging core SVD.
//
// Cost: (2q+2) products of m×n by n×l (≈ 2·m·n·l flops each) in float32
// (see gemm.go), plus O((m+n)·l²) float64 work for the factorisations.
// NaN and ±Inf are found in Y = A·Ω (a non-finite entry of A makes its row
// of Y non-finite), A itself being scanned only then. Memory: O((m+n)·l)
// besides the output.
func RandomizedSVD(a Matrix, opt Options) (SVD, error) {
	if err := a.check("a"); err != nil {
		return SVD{}, fmt.Errorf("randomized svd: %w", err)
	}
	m, n := a.Rows, a.Cols
	if m == 0 || n == 0 {
		return SVD{}, fmt.Errorf("randomized svd: empty %d×%d matrix: %w", m, n, errShape)
	}
	if opt.Rank < 1 {
		return SVD{}, fmt.Errorf("randomized svd: rank %d < 1: %w", opt.Rank, errShape)
	}
	k, l, q := opt.resolved(m, n)
	pool := opt.Pool

	// Ωᵀ (l×n), later reused for the transposed right bases (l×n) and B.
	w, zeroInOmega := gaussianRows(pool, opt.Seed, l, n)
	// Qᵀ (l×m): the transposed left basis.
	qt := make([]float32, l*m)
	var h householder
	// A packed for the products by Qᵀ, in a buffer reused across calls.
	pcBuf := packBufs.Get().(*[]float32)
	pc := packCache{data: *pcBuf}
	defer func() { *pcBuf = pc.data; packBufs.Put(pcBuf) }()
	cq := cholQR{kern: cholKern}
	fast := cholFast
	// The bases of the power iterations may keep one CholeskyQR pass;
	// the last Q (that of U = Q·U_L) gets both.
	orth := func(p []float32, r, c int, last bool) {
		if fast && cq.rows(pool, p, r, c, !last) {
			return
		}
		h.orthoRows(p, r, c)
	}

	// Yᵀ = Ωᵀ·Aᵀ; Q = orth(Y).
	timesBasis(pool, qt, a, w)
	// A NaN or ±Inf in row i of A makes row i of Y = A·Ω non-finite when
	// Ω has no zero (each entry of Y is a chain of sums that takes in the
	// non-finite product A[i][p]·Ω[p][j] and cannot return to a finite
	// value), so A itself is scanned only then, or when Ω has a zero
	// (probability about l·n·2⁻³²), to name the first such entry.
	if zeroInOmega || firstNonFinite(qt) >= 0 {
		if i := firstNonFinite(a.Data); i >= 0 {
			return SVD{}, fmt.Errorf("randomized svd: non-finite entry %v at (%d, %d)", a.Data[i], i/n, i%n)
		}
	}
	orth(qt, l, m, q == 0)
	for it := range q {
		// Zᵀ = Qᵀ·A = (Aᵀ·Q)ᵀ; Q̃ = orth(Z).
		basisTimes(pool, w, qt, a, &pc)
		orth(w, l, n, false)
		// Yᵀ = Q̃ᵀ·Aᵀ = (A·Q̃)ᵀ; Q = orth(Y).
		timesBasis(pool, qt, a, w)
		orth(qt, l, m, it == q-1)
	}
	// B = Qᵀ·A (l×n).
	basisTimes(pool, w, qt, a, &pc)

	var ul, s []float32
	var vt Matrix
	var err error
	ok := false
	if fast {
		ul, s, vt, ok = smallSVDGram(pool, &cq, w, l, n, k)
	}
	if !ok {
		ul, s, vt, err = smallSVD(w, l, n, k, &h)
	}
	if err != nil {
		return SVD{}, fmt.Errorf("randomized svd of %d×%d, rank %d: %w", m, n, k, err)
	}
	// U = Q·U_L[:, :k] (m×k).
	u := NewMatrix(m, k)
	gemm(pool, m, k, l, operand{data: qt, ld: m, trans: true}, operand{data: ul, ld: k}, 0, operand{data: u.Data, ld: k})
	fixSigns(u, vt)
	return SVD{U: u, S: s, Vt: vt}, nil
}

// gaussianRows returns an r×c matrix of standard normal float32 values,
// row i drawn from its own PCG stream (seed, pcgStream + i·pcgRowStep)
// so that the rows are drawn in parallel and the values do not depend on
// the thread count, and whether one of them is zero.
func gaussianRows(pool parallel.Pool, seed uint64, r, c int) ([]float32, bool) {
	w := make([]float32, r*c)
	zero := make([]bool, r)
	pool.For(r, func(_, i int) {
		rng := rand.New(rand.NewPCG(seed, pcgStream+uint64(i)*pcgRowStep))
		row := w[i*c : (i+1)*c]
		for j := range row {
			row[j] = float32(rng.NormFloat64())
			zero[i] = zero[i] || row[j] == 0
		}
	})
	return w, slices.Contains(zero, true)
}

// pcgRowStep separates the second PCG words of the rows of Ω.
const pcgRowStep = 0xbf58476d1ce4e5b9

// errNoConvergence reports a failure of the dense core SVD (LAPACK dgesvd).
var errNoConvergence = errors.New("linalg: core SVD did not converge")

// smallSVD computes the leading k singular triplets of the l×n row-major
// float32 matrix b (l <= n) in float64: b = L·Q_B (LQ), L = U_L·Σ·V_Lᵀ
// (dgesvd), so b = U_L·Σ·(V_Lᵀ·Q_B). It returns U_L[:, :k] as an l×k float32
// slice, Σ[:k], and Vt = V_Lᵀ[:k]·Q_B as a k×n Matrix. b is not modified.
func smallSVD(b []float32, l, n, k int, h *householder) (ul []float32, s []float32, vt Matrix, err error) {
	qb := grow(h.buf, l*n)
	h.buf = qb
	h.tau = grow(h.tau, l)
	to64(qb, b[:l*n])
	h.ensureWork(func(w []float64) { lapack.Dgelqf(l, n, qb, n, h.tau, w, -1) })
	lapack.Dgelqf(l, n, qb, n, h.tau, h.work, len(h.work))
	lo := make([]float64, l*l) // L, lower triangular
	for i := 0; i < l; i++ {
		copy(lo[i*l:i*l+i+1], qb[i*n:i*n+i+1])
	}
	h.ensureWork(func(w []float64) { lapack.Dorglq(l, n, l, qb, n, h.tau, w, -1) })
	lapack.Dorglq(l, n, l, qb, n, h.tau, h.work, len(h.work))

	sig := make([]float64, l)
	uL := make([]float64, l*l)
	vL := make([]float64, l*l)
	h.ensureWork(func(w []float64) {
		lapack.Dgesvd(lapackpkg.SVDAll, lapackpkg.SVDAll, l, l, lo, l, sig, uL, l, vL, l, w, -1)
	})
	if !lapack.Dgesvd(lapackpkg.SVDAll, lapackpkg.SVDAll, l, l, lo, l, sig, uL, l, vL, l, h.work, len(h.work)) {
		return nil, nil, Matrix{}, errNoConvergence
	}

	// Vt = V_Lᵀ[:k, :]·Q_B in float64, then narrowed.
	v64 := make([]float64, k*n)
	blas64.Implementation().Dgemm(blas.NoTrans, blas.NoTrans, k, n, l, 1, vL, l, qb, n, 0, v64, n)
	vt = NewMatrix(k, n)
	to32(vt.Data, v64)

	ul = make([]float32, l*k)
	for i := 0; i < l; i++ {
		to32(ul[i*k:(i+1)*k], uL[i*l:i*l+k])
	}
	s = make([]float32, k)
	for i := range s {
		s[i] = float32(math.Max(sig[i], 0))
	}
	return ul, s, vt, nil
}

// gramSVDMinRatio is the smallest λ_{k−1}/λ_0 (eigenvalues of B·Bᵀ, i.e.
// (σ_{k−1}/σ_0)²) for which smallSVDGram's result is kept: each σ_i is
// then within about u·(σ_0/σ_i)² ≤ 2⁻³³ (relative) of that of a
// backward-stable SVD, far below float32's rounding.
const gramSVDMinRatio = 0x1p-20

// smallSVDGram is smallSVD through the eigendecomposition of the l×l
// Gram matrix B·Bᵀ = U_L·Σ²·U_Lᵀ, formed in float64 on the CholeskyQR2's
// gram kernel (products of float32 entries are exact), solved by [SymEig];
// then Vt = Σ⁻¹·U_L[:, :k]ᵀ·B on the apply kernel. Squaring the spectrum
// costs accuracy for small σ only: ok is false (and the caller falls back
// to smallSVD's LQ + dgesvd) when σ_{k−1}/σ_0 < 2⁻¹⁰ (gramSVDMinRatio),
// when σ_0 = 0, or when SymEig fails.
func smallSVDGram(pool parallel.Pool, cq *cholQR, b []float32, l, n, k int) (ul []float32, s []float32, vt Matrix, ok bool) {
	cq.load(b, l, n)
	cq.gram(pool, cq.x)
	g := make([]float64, l*l)
	for i := 0; i < l; i++ {
		copy(g[i*l:(i+1)*l], cq.g[i*cq.rp:i*cq.rp+l])
	}
	vals, z, err := SymEig(pool, g, l)
	if err != nil || !(vals[0] > 0) || !(vals[k-1] >= gramSVDMinRatio*vals[0]) || math.IsInf(vals[0], 0) {
		return nil, nil, Matrix{}, false
	}
	s = make([]float32, k)
	t := make([]float64, k*l) // Σ⁻¹·U_L[:, :k]ᵀ
	ul = make([]float32, l*k)
	for i := 0; i < k; i++ {
		sig := math.Sqrt(vals[i])
		s[i] = float32(sig)
		for p, v := range z[i*l : (i+1)*l] {
			t[i*l+p] = v / sig
			ul[p*k+i] = float32(v)
		}
	}
	return ul, s, cq.timesQ(pool, t, k, l), true
}

// fixSigns flips singular pairs (column j of u, row j of vt) so that the
// largest-magnitude entry of each column of u is positive.
func fixSigns(u, vt Matrix) {
	for j := 0; j < u.Cols; j++ {
		best, arg := float32(-1), 0
		for i := 0; i < u.Rows; i++ {
			if v := abs32(u.Data[i*u.Cols+j]); v > best {
				best, arg = v, i
			}
		}
		if u.Data[arg*u.Cols+j] >= 0 {
			continue
		}
		for i := 0; i < u.Rows; i++ {
			u.Data[i*u.Cols+j] = -u.Data[i*u.Cols+j]
		}
		row := vt.Data[j*vt.Cols : (j+1)*vt.Cols]
		for i := range row {
			row[i] = -row[i]
		}
	}
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// timesBasis computes Yᵀ = (A·V)ᵀ into yt (l×m) for the m×n matrix a and the
// l×n transposed basis vt (one basis vector per row): yt[j][i] = Σ_p
// A[i][p]·vt[j][p]. l = len(vt)/n.
func timesBasis(pool parallel.Pool, yt []float32, a Matrix, vt []float32) {
	m, n := a.Rows, a.Cols
	l := len(vt) / n
	gemm(pool, m, l, n, operand{data: a.Data, ld: n}, operand{data: vt, ld: n, trans: true}, 0, operand{data: yt, ld: m, trans: true})
}

// basisTimes computes Zᵀ = Qᵀ·A into zt (l×n) for the m×n matrix a and the
// l×m transposed basis qt: zt[j][i] = Σ_p qt[j][p]·A[p][i]. The product is
// formed as Z = Aᵀ·Q (n×l), vectorised across the l basis vectors, and
// stored transposed. l = len(qt)/m.
// pc, when not nil, keeps A packed from one call to the next (see
// packCache).
func basisTimes(pool parallel.Pool, zt, qt []float32, a Matrix, pc *packCache) {
	m, n := a.Rows, a.Cols
	l := len(qt) / m
	gemmPacked(pool, gemmKernel, n, l, m, operand{data: a.Data, ld: n, trans: true}, operand{data: qt, ld: m, trans: true}, 0, operand{data: zt, ld: n, trans: true}, pc)
}
