//go:build goexperiment.simd && amd64

package neuro

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// hasFMA: the CPU has fused multiply-adds. A product of two float32 is
// exact in float64, so fma(x, y, s) rounds once, as s + x·y does.
var hasFMA = archsimd.X86.FMA()

// gramsVec is grams' one pass (see gram.go) with 4-lane float64 vectors
// (AVX2): lane r of a pair's accumulator is Dsdot's class sum r, fed first
// the product of the block's entry r, then that of entry 4 + r. The heads
// are summed before the first vector instruction and the tails after
// archsimd.ClearAVXUpperBits (the AVX→SSE transition penalty). With same
// false the (0, 0) pair is left to the caller.
func gramsVec(g []float64, rows [][]float32, n, h int, same bool) bool {
	if !vec.Accelerated() {
		return false
	}
	R := len(rows)
	var c [maxGramPairs][4]float64
	p := 0
	for a := range R {
		for b := a; b < R; b++ {
			x, y := rows[a], rows[b]
			var s float64
			for j := range h {
				s += float64(x[j]) * float64(y[j])
			}
			c[p][0] = s
			p++
		}
	}
	end := h + (n-h)&^7
	switch {
	case !hasFMA || R > 5:
		gramsVecN(&c, rows, h, end)
	case R == 2:
		gramsFMA2(&c, rows[0], rows[1], h, end)
	case R == 3:
		gramsFMA3((*[6][4]float64)(c[:6]), rows[0], rows[1], rows[2], h, end)
	case R == 4:
		gramsFMA4(&c, rows[0], rows[1], rows[2], rows[3], h, end)
	default:
		gramsFMA5(&c, rows[0], rows[1], rows[2], rows[3], rows[4], h, end)
	}
	archsimd.ClearAVXUpperBits()
	p = 0
	for a := range R {
		for b := a; b < R; b++ {
			if a > 0 || b > 0 || same {
				g[a*R+b] = tailSum(c[p], rows[a][end:n], rows[b][end:n])
			}
			p++
		}
	}
	return true
}

// gramsVecN is gramsVec's loop for any R ≤ maxGramRows: accumulators and
// converted rows in arrays, eight entries per step (the unrolled loops
// keep them in registers).
func gramsVecN(c *[maxGramPairs][4]float64, rows [][]float32, h, end int) {
	R := len(rows)
	P := R * (R + 1) / 2
	var acc [maxGramPairs]archsimd.Float64x4
	for p := range P {
		acc[p] = archsimd.LoadFloat64x4(&c[p])
	}
	var lo, hi [maxGramRows]archsimd.Float64x4
	for j := h; j < end; j += 8 {
		for r := range R {
			v := archsimd.LoadFloat32x8Slice(rows[r][j:])
			lo[r] = v.GetLo().ConvertToFloat64()
			hi[r] = v.GetHi().ConvertToFloat64()
		}
		p := 0
		for a := range R {
			for b := a; b < R; b++ {
				acc[p] = acc[p].Add(lo[a].Mul(lo[b])).Add(hi[a].Mul(hi[b]))
				p++
			}
		}
	}
	for p := range P {
		acc[p].Store(&c[p])
	}
}
