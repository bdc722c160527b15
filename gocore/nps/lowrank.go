package nps

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/linalg"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"gonum.org/v1/gonum/blas/gonum"
)

// lowRankTileBytes bounds the slice of Vᵀ (r rows × tile columns, float32)
// that one pass over a row block streams, so it stays in a core's L2 cache.
const lowRankTileBytes = 256 << 10

// lowRankRowBlock is the number of dst rows one parallel task updates.
const lowRankRowBlock = 16

// addLowRank computes dst += U·diag(coef)·Vᵀ, where u is m×r, coef has
// length r, vt is r×n and dst is an m×n row-major slice (len(dst) == m·n).
// It is the beta = 1 case of linalg.ApplyWeighted with the same float32
// operations in the same order, so the result is bit-identical to it:
// the smaller of U and Vᵀ is scaled by coef (U when m <= n), and every
// element accumulates its r products in order j = 0…r−1, skipping zero
// multipliers (as gonum's Sgemm does).
//
// Why not one Sgemm: for the NPS shapes (r ≈ 64 ≪ m, n) gonum's blocked
// Sgemm issues one 64-element SIMD axpy per (row, j, 64-column block), and
// the call overhead dominates. Here each row gets r axpys over whole rows
// (or over column tiles of at most lowRankTileBytes of Vᵀ, when Vᵀ would not
// stay in L2), about twice as fast on 2 cores. Rows are split in blocks
// across parallel.Threads() goroutines; every element is computed by one
// goroutine in a fixed order, so results do not depend on the thread count.
//
// dst must not overlap u.Data, vt.Data or coef; none of those is modified.
// Cost: 2·m·n·r flops; extra memory O(min(m, n)·r).
func addLowRank(dst []float32, u linalg.Matrix, coef []float32, vt linalg.Matrix) error {
	m, r, n := u.Rows, u.Cols, vt.Cols
	if len(u.Data) != m*r || len(vt.Data) != vt.Rows*n || vt.Rows != r || len(coef) != r {
		return fmt.Errorf("low-rank update: u is %d×%d (%d values), len(coef) = %d, vt is %d×%d (%d values)",
			m, r, len(u.Data), len(coef), vt.Rows, n, len(vt.Data))
	}
	if len(dst) != m*n {
		return fmt.Errorf("low-rank update: len(dst) = %d, want %d×%d", len(dst), m, n)
	}
	if m == 0 || n == 0 || r == 0 {
		return nil
	}
	us, vs := u.Data, vt.Data
	if m <= n {
		us = make([]float32, m*r)
		for i := range m {
			row, out := u.Data[i*r:(i+1)*r], us[i*r:(i+1)*r]
			for j, c := range coef {
				out[j] = row[j] * c
			}
		}
	} else {
		vs = make([]float32, r*n)
		for j, c := range coef {
			row, out := vt.Data[j*n:(j+1)*n], vs[j*n:(j+1)*n]
			for k, v := range row {
				out[k] = v * c
			}
		}
	}
	tile := n
	if r*n*4 > lowRankTileBytes {
		tile = max(256, lowRankTileBytes/(4*r)/64*64)
	}
	blocks := (m + lowRankRowBlock - 1) / lowRankRowBlock
	parallel.For(blocks, func(_, blk int) {
		impl := gonum.Implementation{}
		lo, hi := blk*lowRankRowBlock, min((blk+1)*lowRankRowBlock, m)
		for c0 := 0; c0 < n; c0 += tile {
			w := min(tile, n-c0)
			for i := lo; i < hi; i++ {
				d := dst[i*n+c0 : i*n+c0+w]
				a := us[i*r : (i+1)*r]
				for j, x := range a {
					if x != 0 {
						impl.Saxpy(w, x, vs[j*n+c0:j*n+c0+w], 1, d, 1)
					}
				}
			}
		}
	})
	return nil
}
