//go:build goexperiment.simd && amd64

package vec

import (
	"math"
	"simd/archsimd"
)

// The Gram kernels for two, three and four task vectors keep every partial
// sum in a local, so that the compiler holds them in registers; the loop of
// taskGrams over any T indexes arrays on the stack and waits on a store and
// a load per product. They add the same products in the same order (lanes
// by index mod 4: the low half's product, then the high half's), so the
// sums are the same bits. They take no separate finiteness sum: a τ entry
// that is not finite (an input NaN or ±Inf, or a difference that
// overflows) makes its own square sum, g's diagonal, NaN or ±Inf, while
// products of float32 values cannot overflow float64; gramsFinite reports
// that and the caller declines.

// tau64 returns x − b (float32, as Sub) widened to float64 by halves.
func tau64(x []float32, j int, b archsimd.Float32x8) (lo, hi archsimd.Float64x4) {
	t := archsimd.LoadFloat32x8Slice(x[j:]).Sub(b)
	return t.GetLo().ConvertToFloat64(), t.GetHi().ConvertToFloat64()
}

// gramStep adds la·lc, then ha·hc, to acc lane by lane.
func gramStep(acc, la, ha, lc, hc archsimd.Float64x4) archsimd.Float64x4 {
	return acc.Add(la.Mul(lc)).Add(ha.Mul(hc))
}

// gramLanes holds the kernels' accumulators, stored before the scalar
// folding (which runs after ClearAVXUpperBits: see the note on
// accelerated).
type gramLanes [10][4]float64

func taskGrams2(s *gramLanes, base, x0, x1 []float32) {
	n := len(base)
	x0, x1 = x0[:n], x1[:n]
	var a00, a01, a11 archsimd.Float64x4
	for j := 0; j < n; j += lanes {
		b := archsimd.LoadFloat32x8Slice(base[j:])
		l0, h0 := tau64(x0, j, b)
		l1, h1 := tau64(x1, j, b)
		a00 = gramStep(a00, l0, h0, l0, h0)
		a01 = gramStep(a01, l0, h0, l1, h1)
		a11 = gramStep(a11, l1, h1, l1, h1)
	}
	for i, a := range [...]archsimd.Float64x4{a00, a01, a11} {
		a.Store(&s[i])
	}
}

func taskGrams3(s *gramLanes, base, x0, x1, x2 []float32) {
	n := len(base)
	x0, x1, x2 = x0[:n], x1[:n], x2[:n]
	var a00, a01, a02, a11, a12, a22 archsimd.Float64x4
	for j := 0; j < n; j += lanes {
		b := archsimd.LoadFloat32x8Slice(base[j:])
		l0, h0 := tau64(x0, j, b)
		l1, h1 := tau64(x1, j, b)
		l2, h2 := tau64(x2, j, b)
		a00 = gramStep(a00, l0, h0, l0, h0)
		a01 = gramStep(a01, l0, h0, l1, h1)
		a02 = gramStep(a02, l0, h0, l2, h2)
		a11 = gramStep(a11, l1, h1, l1, h1)
		a12 = gramStep(a12, l1, h1, l2, h2)
		a22 = gramStep(a22, l2, h2, l2, h2)
	}
	for i, a := range [...]archsimd.Float64x4{a00, a01, a02, a11, a12, a22} {
		a.Store(&s[i])
	}
}

func taskGrams4(s *gramLanes, base, x0, x1, x2, x3 []float32) {
	n := len(base)
	x0, x1, x2, x3 = x0[:n], x1[:n], x2[:n], x3[:n]
	var a00, a01, a02, a03, a11, a12, a13, a22, a23, a33 archsimd.Float64x4
	for j := 0; j < n; j += lanes {
		b := archsimd.LoadFloat32x8Slice(base[j:])
		l0, h0 := tau64(x0, j, b)
		l1, h1 := tau64(x1, j, b)
		l2, h2 := tau64(x2, j, b)
		l3, h3 := tau64(x3, j, b)
		a00 = gramStep(a00, l0, h0, l0, h0)
		a01 = gramStep(a01, l0, h0, l1, h1)
		a02 = gramStep(a02, l0, h0, l2, h2)
		a03 = gramStep(a03, l0, h0, l3, h3)
		a11 = gramStep(a11, l1, h1, l1, h1)
		a12 = gramStep(a12, l1, h1, l2, h2)
		a13 = gramStep(a13, l1, h1, l3, h3)
		a22 = gramStep(a22, l2, h2, l2, h2)
		a23 = gramStep(a23, l2, h2, l3, h3)
		a33 = gramStep(a33, l3, h3, l3, h3)
	}
	for i, a := range [...]archsimd.Float64x4{a00, a01, a02, a03, a11, a12, a13, a22, a23, a33} {
		a.Store(&s[i])
	}
}

// gramsFinite reports whether the square sums on g's diagonal (T task
// vectors) are finite.
func gramsFinite(g []float64, T int) bool {
	for a := range T {
		v := g[a*T-a*(a-1)/2]
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// taskGramsFew runs the kernel for T = 2, 3 or 4 task vectors and reports
// whether it applied and every τ entry was finite.
func taskGramsFew(g []float64, base []float32, x [][]float32) (applied, ok bool) {
	var s gramLanes
	switch len(x) {
	case 2:
		taskGrams2(&s, base, x[0], x[1])
	case 3:
		taskGrams3(&s, base, x[0], x[1], x[2])
	case 4:
		taskGrams4(&s, base, x[0], x[1], x[2], x[3])
	default:
		return false, false
	}
	archsimd.ClearAVXUpperBits()
	for p := range len(g) {
		// Dsdot's fold of its four partial sums.
		g[p] = (s[p][0] + s[p][2]) + (s[p][1] + s[p][3])
	}
	return true, gramsFinite(g, len(x))
}
