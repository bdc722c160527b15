// Package neuro holds the per-neuron arithmetic of NeuroMerging (Fang, Du,
// Li, Tang & Goh, "To See a World in a Spark of Neuron: Disentangling
// Multi-task Interference for Training-free Model Merging", EMNLP 2025,
// §3.2–3.3; see /work/shared/METHODS.md, "NeuroMerging").
//
// A neuron is one row w of a pre-trained weight matrix; the T trimmed task
// vectors restricted to it are the rows τ̂_t. Each τ̂_t splits into a
// parallel coefficient s_t = ⟨τ̂_t, w⟩/‖w‖² and an orthogonal part
// o_t = τ̂_t − s_t·w. The parallel coefficients are merged by TIES into s̄
// (Δ∥ = s̄·w); the orthogonal parts are merged by TIES over their
// coordinates in the basis of O's right singular vectors, O = [o_1; …; o_T]
// (Δ⊥ = V·c̄).
//
// The right singular vectors are never formed. With O·Oᵀ = U·S²·Uᵀ (a T × T
// eigendecomposition), V = Oᵀ·U·S⁻¹ and the coordinates are C = O·V = U·S;
// TIES is positively homogeneous, so column j merges to c̄_j = S_j·m_j with
// m_j the TIES merge of U's column j, and
//
//	Δ⊥ = V·c̄ = Oᵀ·(Σ_j m_j·u_j) = Σ_t a_t·o_t,  a = Σ_j m_j·u_j.
//
// Directions with S_j = 0 contribute Oᵀu_j = 0, as they should. The Gram
// matrix of O follows from that of [w; τ̂_1; …; τ̂_T] (one float64 pass over
// the row: (T+1)(T+2)/2 dot products), and the merged row is written in one
// more pass as w + c_w·w + Σ_t b_t·τ̂_t. Cost per neuron of n inputs:
// O(T²·n) plus an O(T³) eigendecomposition (gonum's Dsyev); nothing of size
// n × n is ever formed.
//
// A coordinate below 1e-10 of its direction's singular value counts as
// zero (CoordFloor): tasks with a zero orthogonal part — a neuron the trim
// emptied — have exactly zero coordinates in the SVD, which the
// eigendecomposition only reproduces to rounding error, and TIES' mean runs
// over the nonzero coordinates only.
//
// TIES over scalars here: γ = sign(Σ_t w_t·x_t); the result is the
// w-weighted mean of the x_t with w_t·x_t ≠ 0 of sign γ. A sum within
// 1e-9 of zero relative to Σ|w_t·x_t| elects no sign and gives 0, so that
// the flipped sign of an eigenvector (which flips every coordinate) flips
// the merged coordinate with it and the result does not depend on it.
package neuro
