// Package linalg holds the dense float32 linear-algebra kernels of npsfuse:
// a randomized truncated SVD (Halko, Martinsson & Tropp, "Finding structure
// with randomness", SIAM Review 53(2), 2011, Algorithms 4.4 and 5.1),
// Householder orthonormalisation of rows or columns, and the low-rank
// update dst = β·dst + U·diag(c)·Vᵀ used by NPS-Pruning to build the
// reweighted task vector τ' = w_M·τ + U·diag(c)·Vᵀ (see /work/shared/METHODS.md,
// "NPS-Pruning").
//
// All matrices are dense, row-major float32 ([Matrix]). The large products
// run on the package's own float32 GEMM (gemm.go). On amd64 it uses
// register-blocked FMA micro-kernels in Go assembly (gemm_fma_amd64.s:
// AVX-512 5×80 tiles, else AVX2+FMA 6×16, chosen at run time): every output
// element is one chain of fused multiply-adds in k order. Elsewhere, and
// with -tags purego, the portable kernels (plain Go, or simd/archsimd
// vectors with GOEXPERIMENT=simd) compute the same chain with a separate
// multiply and add, zero A entries skipped, as gonum's Sgemm does. Within a
// build the results are bit for bit the same whatever the thread count
// (parallel over fixed blocks of output elements); between the assembly
// and the portable builds they differ by the rounding of the products,
// within a bound gemm.go states and gemm_fma_test.go checks. The small dense
// factorisations (Householder QR/LQ and the SVD of
// the (k+p)×(k+p) core) run in float64 through gonum's native LAPACK
// (gonum.org/v1/gonum/lapack/gonum); no function in this package ever forms
// a full SVD of the big matrix. On CPUs with AVX-512 the randomized SVD
// orthonormalises its bases by CholeskyQR2 instead (cholqr.go: float64
// Gram matrix and triangular product on assembly kernels whose Go twins give
// the same bits), falling back to Householder for ill-conditioned panels.
//
// For exact decompositions of weight-sized matrices (the subspace merges of
// gocore/merge) it has [SymEig], a symmetric eigensolver (Householder
// tridiagonalisation, then the implicit QL iteration with its rotations on
// contiguous rows, vectorised), and on top of it [GramSVD] (leading singular
// triplets) and [Polar] (the polar factor U·Vᵀ), both through the
// eigendecomposition of the smaller Gram matrix formed in float64 — never a
// dense SVD of the big matrix either.
//
// The package uses no cgo.
package linalg
