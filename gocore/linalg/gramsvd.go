package linalg

import (
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/blas/blas64"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// This file holds exact (not randomized) SVD routines for matrices of the
// size of a network's weights, computed through the eigendecomposition of
// the smaller Gram matrix: for an m×n matrix A with m ≥ n, AᵀA = V·Σ²·Vᵀ
// gives the right singular vectors and the singular values, and U = A·V·Σ⁻¹
// the left ones (for m < n the same on Aᵀ). The Gram matrix is formed in
// float64 from the float32 entries (each product is exact, the sums are
// float64), so squaring the spectrum costs nothing at float32 precision:
// singular values down to about 10⁻⁶·σ₁ keep several correct digits. The
// eigendecomposition is [SymEig] (float64). A·vᵢ/σᵢ runs on this package's
// float32 GEMM for σᵢ ≥ σ₁/16 and in float64 below, where a float32
// product's rounding (of order ε₃₂·σ₁) would be amplified by σ₁/σᵢ. Cost
// for r = min(m, n): m·n·r/2 multiply-adds for the Gram matrix (float64),
// about 8·r³ flops for the eigendecomposition, and m·n·r (or m·n·k)
// multiply-adds per product — far less than a dense SVD of A, and no r×r
// SVD either.

// RankTol is the relative rank tolerance of [GramSVD] and [Polar]: a
// singular value σ ≤ RankTol·max(m, n)·σ₁ counts as zero. It is the single
// precision machine epsilon 2⁻²³, NumPy's matrix_rank rule for float32
// data: below it a direction is rounding noise of the float32 entries.
const RankTol = 0x1p-23

// Gram returns the r×r Gram matrix of the smaller side of a, in float64,
// r = min(Rows, Cols): AᵀA when Rows ≥ Cols, else A·Aᵀ, full (both
// triangles), row-major. Entry (i, j) is the float64 sum, in increasing
// order of the summation index, of the exact products of float32 entries,
// so the result does not depend on the thread count. Cost: about
// m·n·r/2 float64 multiply-adds (the upper triangle, mirrored), parallel
// over blocks of rows.
func Gram(pool parallel.Pool, a Matrix) ([]float64, error) {
	if err := a.check("a"); err != nil {
		return nil, fmt.Errorf("gram matrix: %w", err)
	}
	if a.Rows < a.Cols {
		a = a.Transpose()
	}
	return gramTall(pool, a.Data, a.Rows, a.Cols), nil
}

// gramBlock is the number of rows of the Gram matrix one task accumulates.
const gramBlock = 16

// gramTall returns AᵀA (n×n, float64) for the m×n row-major float32 a:
// G[i][j] = Σ_k a[k][i]·a[k][j], summed over k in order (the products are
// exact). Tasks own blocks of gramBlock rows of G (upper triangle) and
// stream the rows of a once, four at a time (rank4Kernel).
func gramTall(pool parallel.Pool, a []float32, m, n int) []float64 {
	g := make([]float64, n*n)
	blocks := (n + gramBlock - 1) / gramBlock
	pool.For(blocks, func(_, b int) {
		i0 := b * gramBlock
		i1 := min(i0+gramBlock, n)
		var x [4][]float64
		for q := range x {
			x[q] = make([]float64, n-i0)
		}
		var c [4]float64
		for k := 0; k < m; k += 4 {
			for q := range x {
				if k+q < m {
					to64(x[q], a[(k+q)*n+i0:(k+q+1)*n])
				} else {
					clear(x[q]) // past the last row: adds +0
				}
			}
			for i := i0; i < i1; i++ {
				o := i - i0
				for q := range c {
					c[q] = x[q][o]
				}
				rank4Kernel(g[i*n+i:(i+1)*n], &[4][]float64{x[0][o:], x[1][o:], x[2][o:], x[3][o:]}, &c)
			}
		}
	})
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			g[j*n+i] = g[i*n+j]
		}
	}
	return g
}

// rank4Go sets g[j] = (((g[j] + a₀·x₀[j]) + a₁·x₁[j]) + a₂·x₂[j]) + a₃·x₃[j],
// each product and sum rounded on its own; the vector kernels
// (f64_simd_amd64.go) do exactly this on several lanes at once.
func rank4Go(g []float64, x *[4][]float64, a *[4]float64) {
	x0, x1, x2, x3 := x[0][:len(g)], x[1][:len(g)], x[2][:len(g)], x[3][:len(g)]
	for j, v := range g {
		// Conversions keep the products from fusing with the sums.
		v += float64(a[0] * x0[j])
		v += float64(a[1] * x1[j])
		v += float64(a[2] * x2[j])
		v += float64(a[3] * x3[j])
		g[j] = v
	}
}

// tallEig returns the singular values of the m×n matrix a with m ≥ n
// (descending, from the clamped eigenvalues of AᵀA) and its right singular
// vectors, one per row of an n×n float64 matrix.
func tallEig(pool parallel.Pool, a Matrix) (sv, z []float64, err error) {
	n := a.Cols
	vals, z, err := SymEig(pool, gramTall(pool, a.Data, a.Rows, n), n)
	if err != nil {
		return nil, nil, err
	}
	sv = make([]float64, n)
	for i, v := range vals {
		sv[i] = math.Sqrt(math.Max(v, 0))
	}
	return sv, z, nil
}

// rankCut is the number of singular values above the rank tolerance.
func rankCut(sv []float64, m, n int) int {
	if len(sv) == 0 {
		return 0
	}
	tol := RankTol * float64(max(m, n)) * sv[0]
	k := 0
	for k < len(sv) && sv[k] > tol {
		k++
	}
	return k
}

// exactCut is the ratio σ₁/σᵢ from which the left singular vector
// uᵢ = a·vᵢ/σᵢ is computed in float64: a float32 product's rounding, of
// order ε₃₂·σ₁, would weigh ε₃₂·σ₁/σᵢ in uᵢ. Below the cut the float32
// GEMM's error stays under about 16·ε₃₂.
const exactCut = 16

// splitExact returns the index of the first singular value of sv[:k]
// below σ₁/exactCut (k when there is none).
func splitExact(sv []float64, k int) int {
	b := 0
	for b < k && sv[b]*exactCut >= sv[0] {
		b++
	}
	return b
}

// leftVectors returns, for the m×n matrix a (m ≥ n) with right singular
// vectors z (rows, float64) and values sv, the m×(k−lo) matrix of its left
// singular vectors uⱼ = a·vⱼ/σⱼ for lo ≤ j < k: one float32 GEMM for those
// with σⱼ ≥ σ₁/exactCut, float64 dot products (exactly widened entries,
// float64 sums) below, so that every uⱼ is accurate to float32 precision
// however small σⱼ is (above the rank tolerance).
func leftVectors(pool parallel.Pool, a Matrix, z, sv []float64, lo, k int) Matrix {
	m, n := a.Rows, a.Cols
	w := k - lo
	u := NewMatrix(m, w)
	if w <= 0 {
		return u
	}
	b := max(lo, splitExact(sv, k))
	if nb := b - lo; nb > 0 {
		vt := make([]float32, nb*n)
		to32(vt, z[lo*n:b*n])
		gemm(pool, m, nb, n, operand{data: a.Data, ld: n}, operand{data: vt, ld: n, trans: true}, 0, operand{data: u.Data, ld: w})
		inv := make([]float32, nb)
		for j := range inv {
			inv[j] = float32(1 / sv[lo+j])
		}
		for i := 0; i < m; i++ {
			row := u.Data[i*w : i*w+nb]
			for j := range row {
				row[j] *= inv[j]
			}
		}
	}
	if b == k {
		return u
	}
	dot := blas64.Implementation()
	blocks := (m + gramBlock - 1) / gramBlock
	pool.For(blocks, func(_, blk int) {
		row := make([]float64, n)
		for i := blk * gramBlock; i < min((blk+1)*gramBlock, m); i++ {
			to64(row, a.Data[i*n:(i+1)*n])
			for j := b; j < k; j++ {
				u.Data[i*w+j-lo] = float32(dot.Ddot(n, row, 1, z[j*n:(j+1)*n], 1) / sv[j])
			}
		}
	})
	return u
}

// GramSVD returns the k leading singular triplets of the m×n matrix a,
// exactly (up to rounding), through the eigendecomposition of its smaller
// Gram matrix (see the top of this file). k is clamped to [0, min(m, n)].
// Singular values σ ≤ RankTol·max(m, n)·σ₁ are numerically zero: their
// S entries are returned as 0 and their singular vectors as zero vectors,
// so U·diag(S)·Vt is the rank-k truncation of a and the nonzero columns of
// U (rows of Vt) are orthonormal. Each singular pair's sign is fixed so
// that the largest-magnitude entry of its column of U is positive.
//
// The side given by the eigenvectors is accurate to float64 precision
// before rounding; the other, a·v/σ, is a float32 product for
// σ ≥ σ₁/16 and a float64 one below, so both are accurate to float32
// precision (relative to the conditioning of each singular vector).
//
// a is not modified. Errors: inconsistent shape, a NaN or ±Inf entry, or an
// eigensolver failure. Cost: the Gram matrix and its eigendecomposition,
// plus one m×n×k product (part of it in float64).
func GramSVD(pool parallel.Pool, a Matrix, k int) (SVD, error) {
	if err := a.check("a"); err != nil {
		return SVD{}, fmt.Errorf("gram svd: %w", err)
	}
	if i := firstNonFinite(a.Data); i >= 0 {
		return SVD{}, fmt.Errorf("gram svd: non-finite entry %v at (%d, %d)", a.Data[i], i/a.Cols, i%a.Cols)
	}
	m, n := a.Rows, a.Cols
	k = max(0, min(k, m, n))
	out := SVD{U: NewMatrix(m, k), S: make([]float32, k), Vt: NewMatrix(k, n)}
	if k == 0 {
		return out, nil
	}
	tall := a
	if m < n {
		tall = a.Transpose() // its right singular vectors are a's left ones
	}
	sv, z, err := tallEig(pool, tall)
	if err != nil {
		return SVD{}, fmt.Errorf("gram svd of %d×%d: %w", m, n, err)
	}
	r := len(sv)
	kept := min(k, rankCut(sv, m, n))
	for i := 0; i < kept; i++ {
		out.S[i] = float32(sv[i])
	}
	derived := leftVectors(pool, tall, z, sv, 0, kept) // tall.Rows × kept
	known := make([]float32, kept*r)                   // kept×r: one singular vector per row
	to32(known, z[:kept*r])
	if m >= n {
		copy(out.Vt.Data, known)
		for i := 0; i < m; i++ {
			copy(out.U.Data[i*k:i*k+kept], derived.Data[i*kept:(i+1)*kept])
		}
	} else {
		for i := 0; i < kept; i++ {
			for p := 0; p < m; p++ {
				out.U.Data[p*k+i] = known[i*m+p]
			}
			for p := 0; p < n; p++ {
				out.Vt.Data[i*n+p] = derived.Data[p*kept+i]
			}
		}
	}
	fixSigns(out.U, out.Vt)
	return out, nil
}

// Polar returns the polar factor of the m×n matrix a — the partial
// isometry P = Σ_{σᵢ > tol} uᵢ·vᵢᵀ over its numerically nonzero singular
// triplets (tol = RankTol·max(m, n)·σ₁), which is U·Vᵀ of a thin SVD
// a = U·Σ·Vᵀ when a has full rank — and all r = min(m, n) singular values
// of a, descending (computed ones, also those below tol). P is the
// orthogonal matrix nearest to a in Frobenius norm (Higham, "Functions of
// Matrices", 2008, Thm. 8.4): its columns (m ≥ n) or rows (m < n) are the
// orthonormalisation of a's that changes them least. For the zero matrix P
// is zero.
//
// Computed without an SVD of a, for m ≥ n (else on aᵀ, transposed back):
// from the eigendecomposition of AᵀA, P = a·W with W = Σᵢ vᵢ·vᵢᵀ/σᵢ over
// σᵢ ≥ σ₁/16 (r×r, float32 products), plus Σᵢ uᵢ·vᵢᵀ over the smaller
// kept σᵢ with uᵢ = a·vᵢ/σᵢ in float64 (see GramSVD): a small σᵢ does not
// amplify rounding. Accuracy: about 10⁻⁶ relative in our tests, whatever
// the conditioning of a above the rank tolerance.
//
// a is not modified. Errors: inconsistent shape, a NaN or ±Inf entry, or an
// eigensolver failure. Cost: the Gram matrix, its eigendecomposition, one
// r×r×r and one m×n×r float32 product, and m·n·s float64 multiply-adds for
// the s singular values below σ₁/16.
func Polar(pool parallel.Pool, a Matrix) (Matrix, []float64, error) {
	if err := a.check("a"); err != nil {
		return Matrix{}, nil, fmt.Errorf("polar factor: %w", err)
	}
	if i := firstNonFinite(a.Data); i >= 0 {
		return Matrix{}, nil, fmt.Errorf("polar factor: non-finite entry %v at (%d, %d)", a.Data[i], i/a.Cols, i%a.Cols)
	}
	m, n := a.Rows, a.Cols
	if m < n {
		p, sv, err := Polar(pool, a.Transpose())
		if err != nil {
			return Matrix{}, nil, err
		}
		return p.Transpose(), sv, nil
	}
	p := NewMatrix(m, n)
	if n == 0 {
		return p, []float64{}, nil
	}
	sv, z, err := tallEig(pool, a)
	if err != nil {
		return Matrix{}, nil, fmt.Errorf("polar factor of %d×%d: %w", m, n, err)
	}
	kept := rankCut(sv, m, n)
	b := splitExact(sv, kept)
	if b > 0 {
		// W = Z_bᵀ·diag(1/σ)·Z_b (n×n), P = a·W.
		zb := make([]float32, b*n)
		to32(zb, z[:b*n])
		scaled := make([]float32, b*n)
		for i := 0; i < b; i++ {
			inv := float32(1 / sv[i])
			for j, v := range zb[i*n : (i+1)*n] {
				scaled[i*n+j] = v * inv
			}
		}
		w := make([]float32, n*n)
		gemm(pool, n, n, b, operand{data: zb, ld: n, trans: true}, operand{data: scaled, ld: n}, 0, operand{data: w, ld: n})
		gemm(pool, m, n, n, operand{data: a.Data, ld: n}, operand{data: w, ld: n}, 0, operand{data: p.Data, ld: n})
	}
	if s := kept - b; s > 0 {
		// P += U_s·V_sᵀ with U_s = a·V_s/σ in float64.
		us := leftVectors(pool, a, z, sv, b, kept).Data // m×s
		vs := make([]float32, s*n)
		to32(vs, z[b*n:kept*n])
		gemm(pool, m, n, s, operand{data: us, ld: s}, operand{data: vs, ld: n}, 1, operand{data: p.Data, ld: n})
	}
	return p, sv, nil
}

// ProjectOut returns (I − U·Uᵀ)·a: the m×n matrix a with its components
// along the columns of the m×k matrix u removed, for u with orthonormal
// (or zero) columns. Computed in float32 as C = Uᵀ·a (k×n), then a − U·C,
// on this package's GEMM. a and u are not modified. Errors: inconsistent
// shapes. Cost: 2·m·n·k multiply-adds.
func ProjectOut(pool parallel.Pool, a, u Matrix) (Matrix, error) {
	if err := a.check("a"); err != nil {
		return Matrix{}, fmt.Errorf("project out: %w", err)
	}
	if err := u.check("u"); err != nil {
		return Matrix{}, fmt.Errorf("project out: %w", err)
	}
	m, n, k := a.Rows, a.Cols, u.Cols
	if u.Rows != m {
		return Matrix{}, fmt.Errorf("project out: a is %d×%d, u is %d×%d: %w", m, n, u.Rows, k, errShape)
	}
	out := Matrix{Rows: m, Cols: n, Data: slices.Clone(a.Data)}
	if k == 0 || m == 0 || n == 0 {
		return out, nil
	}
	c := make([]float32, k*n)
	gemm(pool, k, n, m, operand{data: u.Data, ld: k, trans: true}, operand{data: a.Data, ld: n}, 0, operand{data: c, ld: n})
	for i := range c {
		c[i] = -c[i]
	}
	gemm(pool, m, n, k, operand{data: u.Data, ld: k}, operand{data: c, ld: n}, 1, operand{data: out.Data, ld: n})
	return out, nil
}
