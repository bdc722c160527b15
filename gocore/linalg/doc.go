// Package linalg holds the dense float32 linear-algebra kernels of npsfuse:
// a randomized truncated SVD (Halko, Martinsson & Tropp, "Finding structure
// with randomness", SIAM Review 53(2), 2011, Algorithms 4.4 and 5.1),
// Householder orthonormalisation of rows or columns, and the low-rank
// update dst = β·dst + U·diag(c)·Vᵀ used by NPS-Pruning to build the
// reweighted task vector τ' = w_M·τ + U·diag(c)·Vᵀ (see /work/shared/METHODS.md,
// "NPS-Pruning").
//
// All matrices are dense, row-major float32 ([Matrix]). The large products
// run on the package's own float32 GEMM (gemm.go), vectorised across output
// columns with simd/archsimd (AVX-512 or AVX2, chosen at run time, when
// built with GOEXPERIMENT=simd on amd64) and in plain Go otherwise. Every
// output element is one sequential float32 sum over k (separate multiply and
// add, zero A entries skipped, as gonum's Sgemm does), so results are bit for
// bit the same whichever kernel runs and whatever the thread count
// (parallel over fixed blocks of output rows). The small dense
// factorisations (Householder QR/LQ and the SVD of
// the (k+p)×(k+p) core) run in float64 through gonum's native LAPACK
// (gonum.org/v1/gonum/lapack/gonum); no function in this package ever forms
// a full SVD of the big matrix.
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
