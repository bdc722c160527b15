//go:build goexperiment.simd && amd64

package vec

import "simd/archsimd"

// sumF64: 32 entries a step, as four float32 vectors widened to eight
// float64 vectors (AVX2), accumulator k holding lanes 4k..4k+3.
func sumF64(x []float32) float64 {
	n := len(x) &^ (sumLanes - 1)
	if !accelerated || n == 0 {
		return sumF64Go(x)
	}
	var a0, a1, a2, a3, a4, a5, a6, a7 archsimd.Float64x4
	for j := 0; j < n; j += sumLanes {
		v0 := archsimd.LoadFloat32x8Slice(x[j:])
		v1 := archsimd.LoadFloat32x8Slice(x[j+8:])
		v2 := archsimd.LoadFloat32x8Slice(x[j+16:])
		v3 := archsimd.LoadFloat32x8Slice(x[j+24:])
		a0 = a0.Add(v0.GetLo().ConvertToFloat64())
		a1 = a1.Add(v0.GetHi().ConvertToFloat64())
		a2 = a2.Add(v1.GetLo().ConvertToFloat64())
		a3 = a3.Add(v1.GetHi().ConvertToFloat64())
		a4 = a4.Add(v2.GetLo().ConvertToFloat64())
		a5 = a5.Add(v2.GetHi().ConvertToFloat64())
		a6 = a6.Add(v3.GetLo().ConvertToFloat64())
		a7 = a7.Add(v3.GetHi().ConvertToFloat64())
	}
	var s SumLanes
	a0.Store((*[4]float64)(s[0:4]))
	a1.Store((*[4]float64)(s[4:8]))
	a2.Store((*[4]float64)(s[8:12]))
	a3.Store((*[4]float64)(s[12:16]))
	a4.Store((*[4]float64)(s[16:20]))
	a5.Store((*[4]float64)(s[20:24]))
	a6.Store((*[4]float64)(s[24:28]))
	a7.Store((*[4]float64)(s[28:32]))
	archsimd.ClearAVXUpperBits() // the tail and the fold are scalar (see accelerated)
	return sumF64Tail(x, n, &s)
}
