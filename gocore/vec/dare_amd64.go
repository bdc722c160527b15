//go:build goexperiment.simd && amd64

package vec

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/rng"
)

// dareVector: the 64-bit lane multiply of rng.Mix (VPMULLQ) needs AVX-512.
var dareVector = accelerated && archsimd.X86.AVX512()

// dareDrop evaluates rng.Bits for 8 entries at once: lane l of z holds
// key + (start+j+l+1)·golden, advanced by 8·golden per step (the same
// value mod 2⁶⁴), then the SplitMix64 finaliser.
func dareDrop(tau []float32, key, start, thr uint64, scale float32) {
	if !dareVector {
		dareDropGo(tau, key, start, thr, scale)
		return
	}
	var golden uint64 = rng.Golden
	n := len(tau) &^ (lanes - 1)
	var z0 [8]uint64
	for l := range z0 {
		z0[l] = key + (start+uint64(l)+1)*golden
	}
	z := archsimd.LoadUint64x8(&z0)
	step := archsimd.BroadcastUint64x8(8 * golden)
	c1 := archsimd.BroadcastUint64x8(0xBF58476D1CE4E5B9)
	c2 := archsimd.BroadcastUint64x8(0x94D049BB133111EB)
	tv := archsimd.BroadcastUint64x8(thr)
	sv := archsimd.BroadcastFloat32x8(scale)
	// Shifts by vectors of counts: ShiftAllRight(k) loads k with a legacy
	// SSE MOVQ in the loop (see the note on accelerated).
	s30 := archsimd.BroadcastUint64x8(30)
	s27 := archsimd.BroadcastUint64x8(27)
	s31 := archsimd.BroadcastUint64x8(31)
	s40 := archsimd.BroadcastUint64x8(40)
	for j := 0; j < n; j += lanes {
		h := z.Xor(z.ShiftRight(s30)).Mul(c1)
		h = h.Xor(h.ShiftRight(s27)).Mul(c2)
		h = h.Xor(h.ShiftRight(s31))
		keep := archsimd.Mask32x8FromBits(h.ShiftRight(s40).Less(tv).ToBits())
		archsimd.LoadFloat32x8Slice(tau[j:]).Mul(sv).Masked(keep).StoreSlice(tau[j:])
		z = z.Add(step)
	}
	archsimd.ClearAVXUpperBits() // see the note on accelerated
	dareDropGo(tau[n:], key, start+uint64(n), thr, scale)
}

// DropVectorized reports whether MergeTasks draws TaskMerge.Drop with a
// vector loop (AVX-512) rather than its scalar twin.
func DropVectorized() bool { return dareVector }
