//go:build goexperiment.simd && amd64

package merge

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// subKeepTopVec is subKeepTopGo with 8-lane vectors (AVX2), vec.KeepTop's
// loop with the subtraction in front: a group holding a tie at the cut
// while ties are still allowed is stored whole and finished by the scalar
// twin after archsimd.ClearAVXUpperBits (rare).
func subKeepTopVec(tau, x, b []float32, bits uint32, allow int) int {
	if !vec.Accelerated() || bits > 0x7fffffff {
		return subKeepTopGo(tau, x, b, bits, allow)
	}
	if countSums512 && len(tau) >= 16 {
		return subKeepTop16(tau, x, b, bits, allow)
	}
	n := len(tau) &^ 7
	bv := archsimd.BroadcastInt32x8(int32(bits))
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	for j := 0; j < n; j += 8 {
		v := archsimd.LoadFloat32x8Slice(x[j:]).Sub(archsimd.LoadFloat32x8Slice(b[j:]))
		a := v.AsInt32x8().And(abs)
		keep := a.Greater(bv)
		if allow < 0 {
			keep = a.GreaterEqual(bv)
		} else if allow > 0 && a.Equal(bv).ToBits() != 0 {
			archsimd.ClearAVXUpperBits()
			allow = subKeepTopGo(tau[j:j+8], x[j:j+8], b[j:j+8], bits, allow)
			continue
		}
		v.Masked(keep).StoreSlice(tau[j:])
	}
	archsimd.ClearAVXUpperBits()
	return subKeepTopGo(tau[n:], x[n:], b[n:], bits, allow)
}

// subKeepTop16 is subKeepTopVec with 16 lanes (AVX-512, where
// countSums512 says the CPU has it).
func subKeepTop16(tau, x, b []float32, bits uint32, allow int) int {
	n := len(tau) &^ 15
	bv := archsimd.BroadcastInt32x16(int32(bits))
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	for j := 0; j < n; j += 16 {
		v := archsimd.LoadFloat32x16Slice(x[j:]).Sub(archsimd.LoadFloat32x16Slice(b[j:]))
		a := v.AsInt32x16().And(abs)
		keep := a.Greater(bv)
		if allow < 0 {
			keep = a.GreaterEqual(bv)
		} else if allow > 0 && a.Equal(bv).ToBits() != 0 {
			archsimd.ClearAVXUpperBits()
			allow = subKeepTopGo(tau[j:j+16], x[j:j+16], b[j:j+16], bits, allow)
			continue
		}
		v.Masked(keep).StoreSlice(tau[j:])
	}
	archsimd.ClearAVXUpperBits()
	return subKeepTopGo(tau[n:], x[n:], b[n:], bits, allow)
}
