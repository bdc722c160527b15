package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/linalg"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// Isotropic merging (Marczak, Magistri, Cygert, Twardowski, Bagdanov & van
// de Weijer, "No Task Left Behind: Isotropic Model Merging with Common and
// Task-Specific Subspaces", ICML 2025), as the authors' code
// (danielm1405/iso-merging, src/utils/iso.py) computes it, per matrix
// (layout (out, in), r = min(out, in)); see subspace.go for the plumbing,
// the weights and the tensors that are not matrices (mean of the task
// vectors, as the authors do for every tensor that is not 2-D).
//
// iso_c (§4.1, "Iso-C"): Δ_TA = Σ_t w_t·τ_t = U·Σ·Vᵀ; Δ = σ̄·U·Vᵀ with
// σ̄ = (1/r)·Σ_{i≤r} σ_i, the mean of all r singular values: task
// arithmetic's spectrum flattened to its mean, which leaves the subspace
// and trace norm of Δ_TA unchanged.
//
// iso_cts (§4.2, "Iso-CTS"): the common subspace is the top k singular
// triplets of Δ_TA, k = r − T·s with the authors' rounding
// k₀ = ⌊r·common_space_fraction⌋, s = round_half_even((r − k₀)/T) (s is
// capped at ⌊r/T⌋ where that rounding would overshoot r); each task
// contributes the top s singular triplets of its part outside the common
// left subspace, (I − U_k·U_kᵀ)·w_t·τ_t; the T·s + k = r left vectors and
// right vectors are concatenated and each set orthogonalised (its polar
// factor, the authors' U·Vᵀ of its SVD); Δ = σ̄·U⊥·V⊥ᵀ with σ̄ the mean of
// the r concatenated singular values (k common, s per task). With s = 0
// (common_space_fraction 1, or a matrix too small to share) it is iso_c.
//
// Both: θ = θ₀ + λ·Δ on every tensor. The authors choose λ on validation
// data from {0.1, 0.2, …, 3.0} (src/eval/eval.py) and their code has no
// validation-free default; npsfuse's default λ = 1 is FusionBench's
// default scaling_factor for both methods, and keeps Iso-C's trace norm
// equal to that of the plain sum Σ_t w_t·τ_t (task arithmetic at λ = 1).
//
// Numerical choices (both exact up to rounding, unlike a randomized SVD):
// singular values at or below linalg.RankTol·max(out, in)·σ₁ count as
// zero, and their directions — which an SVD completes arbitrarily, so the
// authors' code adds arbitrary orthonormal directions of weight σ̄ for a
// rank-deficient Δ_TA — are left out: Δ_TA = 0 gives Δ = 0, and a rank-1
// Δ_TA gives Δ = Δ_TA·(σ₁/r)/σ₁ = Δ_TA/r.
func init() {
	register(Method{Name: "iso_c", Sparsify: keepAll{}, Combine: subspaceMerge{name: "iso_c", delta: isoCDelta}})
	register(Method{Name: "iso_cts", Sparsify: keepAll{}, Combine: isoCTS{subspaceMerge{name: "iso_cts", tasks: true, delta: isoCTSDelta}}})
}

// isoCTS is subspaceMerge with Iso-CTS's parameter check.
type isoCTS struct{ subspaceMerge }

// isoCDelta is Iso-C's Δ = σ̄·polar(Δ_TA).
func isoCDelta(p *Params, sum linalg.Matrix, _ []linalg.Matrix) (linalg.Matrix, error) {
	q, sv, err := linalg.Polar(p.Pool, sum)
	if err != nil {
		return linalg.Matrix{}, err
	}
	return scaled(q, meanSingular(sv)), nil
}

// isoCTSSizes returns Iso-CTS's common-subspace size k and per-task size s
// for rank r and T tasks, rounded as the authors' code does:
// k₀ = int(r·f), s = round((r − k₀)/T) (Python's round: half to even),
// k = r − T·s; s is capped at ⌊r/T⌋ so that k ≥ 0.
func isoCTSSizes(r, T int, frac float64) (common, per int) {
	k0 := int(float64(r) * frac)
	per = int(math.RoundToEven(float64(r-k0) / float64(T)))
	per = min(per, r/T)
	return r - T*per, per
}

// isoCTSDelta is Iso-CTS's Δ (see the method's doc comment).
func isoCTSDelta(p *Params, sum linalg.Matrix, tasks []linalg.Matrix) (linalg.Matrix, error) {
	m, n := sum.Rows, sum.Cols
	r, T := min(m, n), len(tasks)
	common, per := isoCTSSizes(r, T, p.CommonSpaceFraction)
	if per == 0 {
		return isoCDelta(p, sum, nil)
	}
	c, err := linalg.GramSVD(p.Pool, sum, common)
	if err != nil {
		return linalg.Matrix{}, err
	}
	own := make([]linalg.SVD, T)
	err = forTasks(p.Pool, T, func(t int) error {
		rest, err := linalg.ProjectOut(p.Pool, tasks[t], c.U)
		if err != nil {
			return err
		}
		own[t], err = linalg.GramSVD(p.Pool, rest, per)
		return err
	})
	if err != nil {
		return linalg.Matrix{}, err
	}
	// [U_1 … U_T U_common], likewise the singular values and Vᵀ's rows.
	pu, sv, pvt, err := orthogonalFactors(p.Pool, append(own, c), m, n)
	if err != nil {
		return linalg.Matrix{}, err
	}
	mean := 0.0
	for _, s := range sv {
		mean += float64(s)
	}
	mean /= float64(len(sv))
	coef := make([]float32, len(sv))
	for i := range coef {
		coef[i] = float32(mean)
	}
	return lowRank(p.Pool, pu, coef, pvt)
}

// orthogonalFactors concatenates the SVDs' factors (concatSVDs) and
// replaces U and Vᵀ by their polar factors, the nearest matrices with
// orthonormal columns and rows: the orthogonalisation of TSV-Merge and
// Iso-CTS. The singular values are returned in concatenation order.
func orthogonalFactors(pool parallel.Pool, parts []linalg.SVD, m, n int) (pu linalg.Matrix, sv []float32, pvt linalg.Matrix, err error) {
	u, sv, vt := concatSVDs(parts, m, n)
	if pu, _, err = linalg.Polar(pool, u); err != nil {
		return linalg.Matrix{}, nil, linalg.Matrix{}, err
	}
	if pvt, _, err = linalg.Polar(pool, vt); err != nil {
		return linalg.Matrix{}, nil, linalg.Matrix{}, err
	}
	return pu, sv, pvt, nil
}

// concatSVDs places the factors side by side: U = [U_1 … U_p] (m×K), the
// singular values in the same order, Vᵀ = [Vt_1; …; Vt_p] (K×n).
func concatSVDs(parts []linalg.SVD, m, n int) (u linalg.Matrix, sv []float32, vt linalg.Matrix) {
	K := 0
	for _, s := range parts {
		K += len(s.S)
	}
	u = linalg.NewMatrix(m, K)
	vt = linalg.NewMatrix(K, n)
	sv = make([]float32, 0, K)
	off := 0
	for _, s := range parts {
		k := len(s.S)
		for i := 0; i < m; i++ {
			copy(u.Data[i*K+off:i*K+off+k], s.U.Data[i*k:(i+1)*k])
		}
		copy(vt.Data[off*n:(off+k)*n], s.Vt.Data)
		sv = append(sv, s.S...)
		off += k
	}
	return u, sv, vt
}

// lowRank returns U·diag(coef)·Vt as a new matrix.
func lowRank(pool parallel.Pool, u linalg.Matrix, coef []float32, vt linalg.Matrix) (linalg.Matrix, error) {
	d := linalg.NewMatrix(u.Rows, vt.Cols)
	if err := linalg.ApplyWeighted(pool, d.Data, u, coef, vt, 0); err != nil {
		return linalg.Matrix{}, err
	}
	return d, nil
}
