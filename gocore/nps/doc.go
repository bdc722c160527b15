// Package nps implements the kernels of NPS-Pruning (Du, Fang, Li et al.,
// 2025): a task vector τ is split into subspaces q_m with τ = Σ_m q_m, each
// subspace gets a weight w_m, and the top `keep` fraction of the reweighted
// τ' = Σ_m w_m q_m by magnitude is kept (METHODS.md, "NPS-Pruning", steps
// 1–3). The search for w (step 4) is Session: the start point first, then
// the generations of an optimizer from gocore/search (search.New), driven by
// every door alike (npsfuse.nps.Search, the daemon's nps_search).
//
// The decomposition is computed once per tensor and kept compactly: for a
// 2-D tensor the factors U, S, Vᵀ of a randomized truncated SVD of rank R
// (gocore/linalg) with the singular directions grouped into geometric rank
// bands [0,1), [1,2), [2,4), …; for 1-D tensors (and for all tensors with
// KindMagnitude) M−1 magnitude thresholds that cut the entries into M
// equal-count bands. Building a candidate is then one low-rank update per
// matrix, τ' = w_M·τ + U·diag((w_band − w_M)·S)·Vᵀ (2·rows·cols·R flops,
// run as row-wise SIMD axpys, bit-identical to a gonum Sgemm but about twice
// as fast for R ≪ rows, cols), and a radix select (gocore/topk) for the
// top-k, written into caller-provided buffers.
package nps
