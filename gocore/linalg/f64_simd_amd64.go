//go:build goexperiment.simd && amd64

package linalg

import "simd/archsimd"

// The float64 kernels of SymEig (plane rotations) and Gram (rank-4
// updates), on 8 lanes (AVX-512) or 4 (AVX2): each lane does exactly the
// scalar loop's separate multiplies and sums, so the results are the
// scalar kernels' bits. Each kernel ends with VZEROUPPER, once, before its
// scalar tail (see package vec on the AVX-SSE transition penalty).

// rotKernel is the widest rotation kernel the CPU runs.
var rotKernel = func() func(x, y []float64, c, s float64) {
	switch {
	case archsimd.X86.AVX512():
		return rot512
	case archsimd.X86.AVX2():
		return rot256
	}
	return rotGo
}()

// rot512 is rotGo on 8 lanes at a time (AVX-512).
func rot512(x, y []float64, c, s float64) {
	y = y[:len(x)]
	n := len(x) &^ 7
	cv, sv := archsimd.BroadcastFloat64x8(c), archsimd.BroadcastFloat64x8(s)
	for k := 0; k < n; k += 8 {
		xv := archsimd.LoadFloat64x8Slice(x[k:])
		yv := archsimd.LoadFloat64x8Slice(y[k:])
		sv.Mul(xv).Add(cv.Mul(yv)).StoreSlice(y[k:])
		cv.Mul(xv).Sub(sv.Mul(yv)).StoreSlice(x[k:])
	}
	archsimd.ClearAVXUpperBits()
	rotGo(x[n:], y[n:], c, s)
}

// rot256 is rotGo on 4 lanes at a time (AVX2).
func rot256(x, y []float64, c, s float64) {
	y = y[:len(x)]
	n := len(x) &^ 3
	cv, sv := archsimd.BroadcastFloat64x4(c), archsimd.BroadcastFloat64x4(s)
	for k := 0; k < n; k += 4 {
		xv := archsimd.LoadFloat64x4Slice(x[k:])
		yv := archsimd.LoadFloat64x4Slice(y[k:])
		sv.Mul(xv).Add(cv.Mul(yv)).StoreSlice(y[k:])
		cv.Mul(xv).Sub(sv.Mul(yv)).StoreSlice(x[k:])
	}
	archsimd.ClearAVXUpperBits()
	rotGo(x[n:], y[n:], c, s)
}

// rank4Kernel is the widest rank-4 update kernel the CPU runs.
var rank4Kernel = func() func(g []float64, x *[4][]float64, a *[4]float64) {
	switch {
	case archsimd.X86.AVX512():
		return rank4x512
	case archsimd.X86.AVX2():
		return rank4x256
	}
	return rank4Go
}()

// rank4x512 is rank4Go on 8 lanes at a time (AVX-512).
func rank4x512(g []float64, x *[4][]float64, a *[4]float64) {
	n := len(g) &^ 7
	x0, x1, x2, x3 := x[0][:len(g)], x[1][:len(g)], x[2][:len(g)], x[3][:len(g)]
	a0, a1 := archsimd.BroadcastFloat64x8(a[0]), archsimd.BroadcastFloat64x8(a[1])
	a2, a3 := archsimd.BroadcastFloat64x8(a[2]), archsimd.BroadcastFloat64x8(a[3])
	for j := 0; j < n; j += 8 {
		acc := archsimd.LoadFloat64x8Slice(g[j:])
		acc = acc.Add(archsimd.LoadFloat64x8Slice(x0[j:]).Mul(a0))
		acc = acc.Add(archsimd.LoadFloat64x8Slice(x1[j:]).Mul(a1))
		acc = acc.Add(archsimd.LoadFloat64x8Slice(x2[j:]).Mul(a2))
		acc = acc.Add(archsimd.LoadFloat64x8Slice(x3[j:]).Mul(a3))
		acc.StoreSlice(g[j:])
	}
	archsimd.ClearAVXUpperBits()
	rank4Go(g[n:], &[4][]float64{x0[n:], x1[n:], x2[n:], x3[n:]}, a)
}

// rank4x256 is rank4Go on 4 lanes at a time (AVX2).
func rank4x256(g []float64, x *[4][]float64, a *[4]float64) {
	n := len(g) &^ 3
	x0, x1, x2, x3 := x[0][:len(g)], x[1][:len(g)], x[2][:len(g)], x[3][:len(g)]
	a0, a1 := archsimd.BroadcastFloat64x4(a[0]), archsimd.BroadcastFloat64x4(a[1])
	a2, a3 := archsimd.BroadcastFloat64x4(a[2]), archsimd.BroadcastFloat64x4(a[3])
	for j := 0; j < n; j += 4 {
		acc := archsimd.LoadFloat64x4Slice(g[j:])
		acc = acc.Add(archsimd.LoadFloat64x4Slice(x0[j:]).Mul(a0))
		acc = acc.Add(archsimd.LoadFloat64x4Slice(x1[j:]).Mul(a1))
		acc = acc.Add(archsimd.LoadFloat64x4Slice(x2[j:]).Mul(a2))
		acc = acc.Add(archsimd.LoadFloat64x4Slice(x3[j:]).Mul(a3))
		acc.StoreSlice(g[j:])
	}
	archsimd.ClearAVXUpperBits()
	rank4Go(g[n:], &[4][]float64{x0[n:], x1[n:], x2[n:], x3[n:]}, a)
}
