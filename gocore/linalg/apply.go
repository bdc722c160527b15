package linalg

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// ApplyWeighted computes dst = beta·dst + U·diag(coef)·Vt with a single
// matrix product (this package's GEMM, gemm.go: one fused multiply-add
// chain per element with the assembly kernels on amd64; in the portable
// build the operation order of gonum's blas32 Sgemm, hence bit-identical
// to it), where u is m×r, coef has length r, vt is r×n and dst is an
// m×n row-major slice (len(dst) == m·n). When beta == 0 the previous content
// of dst is ignored (NaN included), as in BLAS.
//
// NPS-Pruning (METHODS.md, "NPS-Pruning", step 2) uses it to build the
// reweighted task vector τ' = Σ_m w_m·q_m with q_m = U_m·S_m·V_mᵀ for the
// rank bands and the residual q_M = τ − U·S·Vᵀ: τ' = w_M·τ + U·diag(c)·Vᵀ
// with c_j = (w_band(j) − w_M)·S_j, i.e. ApplyWeighted(τ, U, c, Vt, w_M).
//
// dst must not overlap u.Data, vt.Data or coef; none of those is modified.
// The smaller of u and vt is copied once and scaled by coef (O(min(m,n)·r)).
// Cost: 2·m·n·r flops. Errors: inconsistent shapes.
func ApplyWeighted(pool parallel.Pool, dst []float32, u Matrix, coef []float32, vt Matrix, beta float32) error {
	if err := u.check("u"); err != nil {
		return fmt.Errorf("apply weighted: %w", err)
	}
	if err := vt.check("vt"); err != nil {
		return fmt.Errorf("apply weighted: %w", err)
	}
	m, r, n := u.Rows, u.Cols, vt.Cols
	if vt.Rows != r || len(coef) != r {
		return fmt.Errorf("apply weighted: u is %d×%d, len(coef) = %d, vt is %d×%d: %w",
			m, r, len(coef), vt.Rows, n, errShape)
	}
	if len(dst) != m*n {
		return fmt.Errorf("apply weighted: len(dst) = %d, want %d×%d: %w", len(dst), m, n, errShape)
	}
	if m == 0 || n == 0 {
		return nil
	}
	if r == 0 {
		scale(dst, beta)
		return nil
	}
	us, vs := u.Data, vt.Data
	if m <= n {
		us = make([]float32, m*r)
		for i := 0; i < m; i++ {
			row := u.Data[i*r : (i+1)*r]
			out := us[i*r : (i+1)*r]
			for j, c := range coef {
				out[j] = row[j] * c
			}
		}
	} else {
		vs = make([]float32, r*n)
		for j, c := range coef {
			row := vt.Data[j*n : (j+1)*n]
			out := vs[j*n : (j+1)*n]
			for i, v := range row {
				out[i] = v * c
			}
		}
	}
	gemm(pool, m, n, r, operand{data: us, ld: r}, operand{data: vs, ld: n}, beta, operand{data: dst, ld: n})
	return nil
}

// scale sets x = beta·x, with beta == 0 writing exact zeros.
func scale(x []float32, beta float32) {
	switch beta {
	case 1:
	case 0:
		clear(x)
	default:
		for i := range x {
			x[i] *= beta
		}
	}
}

// Reconstruct writes the rank-r approximation U·diag(S)·Vt into dst, an
// m×n row-major slice with m = U.Rows and n = Vt.Cols (len(dst) == m·n);
// dst's previous content is ignored. It is [ApplyWeighted] with coef = S and
// beta = 0: one matrix product, 2·m·n·r flops. Errors: inconsistent shapes.
func (s SVD) Reconstruct(pool parallel.Pool, dst []float32) error {
	if err := ApplyWeighted(pool, dst, s.U, s.S, s.Vt, 0); err != nil {
		return fmt.Errorf("reconstruct: %w", err)
	}
	return nil
}
