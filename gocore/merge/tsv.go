package merge

import (
	"github.com/npsfuse/npsfuse/gocore/linalg"
)

// TSV-Merge (Gargiulo, Crisostomi, Bucarelli, Scardapane, Silvestri &
// Rodolà, "Task Singular Vectors: Reducing Task Interference in Model
// Merging", CVPR 2025, §5 "TSV-Merge", eqs. 5–7), as the authors' code
// (AntoAndGar/task_singular_vectors, src/utils/TSVM_utils.py,
// compute_and_sum_svd_mem_reduction) computes it, per matrix (layout
// (out, in), r = min(out, in)); see subspace.go for the plumbing, the
// weights and the tensors that are not matrices (mean of the task vectors,
// as the authors do for every tensor that is not 2-D):
//
//  1. each task's matrix w_t·τ_t ≈ U_t·S_t·V_tᵀ, truncated to its top
//     k = ⌊r/T⌋ singular triplets (the authors' sv_reduction 1/T; their
//     int(r·(1/T)) is one less for a few T ≥ 49 that divide r, where the
//     float product rounds down);
//  2. U = [U_1 … U_T] (out×T·k), S = diag(S_1, …, S_T), V = [V_1 … V_T];
//  3. decorrelate: U⊥ and V⊥ are the polar factors of U and V (the
//     authors' P·Qᵀ of the SVD U = P·Σ·Qᵀ: the orthonormal matrices
//     nearest to U and V, Procrustes);
//  4. Δ = U⊥·S·V⊥ᵀ, θ = θ₀ + λ·Δ (every tensor).
//
// With T = 1 it returns τ₁ (k = r, U and V already orthonormal); a matrix
// with r < T (k = 0) gets Δ = 0, as in the authors' code. TSV-M does not
// depend on the layout (the SVD of τᵀ is that of τ, transposed).
//
// λ defaults to 1: Δ keeps the tasks' own singular values, so it is on the
// scale of one task vector, not of their sum, and 1 is the scale the
// method is presented at without validation data (FusionBench's default
// alpha is 1 too). The authors' code, given validation data, picks α from
// {0.1, 0.2, …, 3.0} there.
//
// Singular values at or below linalg.RankTol·max(out, in)·σ₁ of a task
// count as zero (their vectors, arbitrary in an SVD, are left out; they
// carried no weight); directions that the T·k vectors share exactly are
// dropped by the polar factor (a partial isometry), which changes nothing
// for vectors in general position.
func init() {
	register(Method{Name: "tsv", Sparsify: keepAll{}, Combine: subspaceMerge{name: "tsv", tasks: true, delta: tsvDelta}})
}

// tsvDelta is TSV-M's Δ for one matrix.
func tsvDelta(p *Params, sum linalg.Matrix, tasks []linalg.Matrix) (linalg.Matrix, error) {
	m, n := sum.Rows, sum.Cols
	T := len(tasks)
	k := min(m, n) / T
	if k == 0 {
		return linalg.NewMatrix(m, n), nil
	}
	parts := make([]linalg.SVD, T)
	err := forTasks(p.Pool, T, func(t int) error {
		var err error
		parts[t], err = linalg.GramSVD(p.Pool, tasks[t], k)
		return err
	})
	if err != nil {
		return linalg.Matrix{}, err
	}
	pu, sv, pvt, err := orthogonalFactors(p.Pool, parts, m, n)
	if err != nil {
		return linalg.Matrix{}, err
	}
	return lowRank(p.Pool, pu, sv, pvt)
}
