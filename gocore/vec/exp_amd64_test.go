//go:build goexperiment.simd && amd64

package vec

import (
	"math"
	"simd/archsimd"
	"testing"
)

// TestExpTanh32x8MatchScalar checks that the vector twins give Exp32's and
// Tanh32's bits lane by lane, over the whole float32 range, ±0, ±Inf and
// NaN.
func TestExpTanh32x8MatchScalar(t *testing.T) {
	if !accelerated {
		t.Skip("no AVX2")
	}
	xs := expTanhInputs(-math.MaxFloat32, math.MaxFloat32, 1009)
	xs = append(xs, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		-86, -86.5, 88.72, 88.73, 89, 0.625, -0.625, 0.62499997, 44, 44.5)
	for len(xs)%8 != 0 {
		xs = append(xs, 1)
	}
	k := NewExpConsts()
	ge, gt := make([]float32, len(xs)), make([]float32, len(xs))
	for j := 0; j < len(xs); j += 8 {
		x := archsimd.LoadFloat32x8Slice(xs[j:])
		Exp32x8(x, k).StoreSlice(ge[j:])
		Tanh32x8(x, k).StoreSlice(gt[j:])
	}
	archsimd.ClearAVXUpperBits()
	for j, x := range xs {
		if w := Exp32(x); math.Float32bits(ge[j]) != math.Float32bits(w) {
			t.Fatalf("Exp32x8 lane %g = %g, Exp32 %g", x, ge[j], w)
		}
		if w := Tanh32(x); math.Float32bits(gt[j]) != math.Float32bits(w) {
			t.Fatalf("Tanh32x8 lane %g = %g, Tanh32 %g", x, gt[j], w)
		}
	}
}

// TestExpTanh32x16MatchScalar checks the 16-lane twins as
// TestExpTanh32x8MatchScalar checks the 8-lane ones (on a CPU with
// AVX-512), with one lane of every group of 16 above the polynomial range
// and groups on the polynomial only.
func TestExpTanh32x16MatchScalar(t *testing.T) {
	if !accelerated || !archsimd.X86.AVX512() {
		t.Skip("no AVX-512")
	}
	xs := expTanhInputs(-math.MaxFloat32, math.MaxFloat32, 1009)
	xs = append(xs, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		-86, -86.5, 88.72, 88.73, 89, 0.625, -0.625, 0.62499997, 44, 44.5)
	for len(xs)%16 != 0 {
		xs = append(xs, 1)
	}
	small := expTanhInputs(-0.62499997, 0.62499997, 4099)
	small = append(small, 0.62499997, -0.62499997, float32(math.Copysign(0, -1)))
	small = append(small, 0.625) // the last group: one lane on exp
	for len(small)%16 != 0 {
		small = append([]float32{0.5}, small...)
	}
	xs = append(xs, small...)
	k := NewExpConsts16()
	ge, gt, gr := make([]float32, len(xs)), make([]float32, len(xs)), make([]float32, len(xs))
	gs, isSmall := make([]float32, len(xs)), make([]bool, len(xs)/16)
	for j := 0; j < len(xs); j += 16 {
		x := archsimd.LoadFloat32x16Slice(xs[j:])
		Exp32x16(x, k).StoreSlice(ge[j:])
		Tanh32x16(x, k).StoreSlice(gt[j:])
		Exp32x16InRange(x, k).StoreSlice(gr[j:])
		if v, ok := Tanh32x16Small(x, k); ok {
			v.StoreSlice(gs[j:])
			isSmall[j/16] = true
		}
	}
	archsimd.ClearAVXUpperBits()
	for j, x := range xs {
		a := math.Abs(float64(x))
		if allSmall := !(a >= 0.625); isSmall[j/16] != groupSmall(xs[j/16*16:j/16*16+16]) || allSmall && isSmall[j/16] && math.Float32bits(gs[j]) != math.Float32bits(Tanh32(x)) {
			t.Fatalf("Tanh32x16Small lane %g: ok=%v, %g; Tanh32 %g", x, isSmall[j/16], gs[j], Tanh32(x))
		}
		if x > -86 && x < 89 && math.Float32bits(gr[j]) != math.Float32bits(ge[j]) {
			t.Fatalf("Exp32x16InRange lane %g = %g, Exp32x16 %g", x, gr[j], ge[j])
		}
		if w := Exp32(x); math.Float32bits(ge[j]) != math.Float32bits(w) {
			t.Fatalf("Exp32x16 lane %g = %g, Exp32 %g", x, ge[j], w)
		}
		if w := Tanh32(x); math.Float32bits(gt[j]) != math.Float32bits(w) {
			t.Fatalf("Tanh32x16 lane %g = %g, Tanh32 %g", x, gt[j], w)
		}
	}
}

// groupSmall reports whether every x has |x| < 0.625 (NaN is not).
func groupSmall(xs []float32) bool {
	for _, x := range xs {
		if !(math.Abs(float64(x)) < 0.625) {
			return false
		}
	}
	return true
}
