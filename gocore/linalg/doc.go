// Package linalg holds the dense float32 linear-algebra kernels of npsfuse:
// a randomized truncated SVD (Halko, Martinsson & Tropp, "Finding structure
// with randomness", SIAM Review 53(2), 2011, Algorithms 4.4 and 5.1),
// Householder orthonormalisation of rows or columns, and the low-rank
// update dst = β·dst + U·diag(c)·Vᵀ used by NPS-Pruning to build the
// reweighted task vector τ' = w_M·τ + U·diag(c)·Vᵀ (see /work/shared/METHODS.md,
// "NPS-Pruning").
//
// All matrices are dense, row-major float32 ([Matrix]). The large products
// run through gonum's blas32 Sgemm (pure Go with SSE assembly, parallel over
// 64×64 output blocks, with a block partition that does not depend on
// GOMAXPROCS, so results are bit-for-bit reproducible whatever the thread
// count). The small dense factorisations (Householder QR/LQ and the SVD of
// the (k+p)×(k+p) core) run in float64 through gonum's native LAPACK
// (gonum.org/v1/gonum/lapack/gonum); no function in this package ever forms
// a full SVD of the big matrix.
//
// The package uses no cgo.
package linalg
