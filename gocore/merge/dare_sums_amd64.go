//go:build goexperiment.simd && amd64

package merge

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// dareSumsVector: the draw's 64-bit lane multiply (VPMULLQ) and the keep
// mask from bits need AVX-512.
var dareSumsVector = vec.Accelerated() && archsimd.X86.AVX512()

// dareSums is dareSumsGo in one vector pass that reads x and b where they
// are stored (float32, or bfloat16 when x16 and b16 are set), so that the
// rescale pass of DARE no longer widens the inputs into scratch, forms τ,
// sums it, drops entries and sums it again in five passes. As in package
// vec, no scalar float instruction runs between the first vector
// instruction and archsimd.ClearAVXUpperBits.
func dareSums(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64) (before, after float64, ok bool) {
	n := max(len(x32), len(x16))
	n8 := n &^ 7
	if !dareSumsVector || n8 == 0 {
		return dareSumsGo(x32, b32, x16, b16, key, start, thr)
	}
	wide := x16 != nil
	if wide {
		x16, b16 = x16[:n], b16[:n]
	} else {
		x32, b32 = x32[:n], b32[:n]
	}
	var z0 [8]uint64
	for l := range z0 {
		z0[l] = key + (start+uint64(l)+1)*rng.Golden
	}
	z := archsimd.LoadUint64x8(&z0)
	var golden uint64 = rng.Golden
	step := archsimd.BroadcastUint64x8(8 * golden)
	c1 := archsimd.BroadcastUint64x8(0xBF58476D1CE4E5B9)
	c2 := archsimd.BroadcastUint64x8(0x94D049BB133111EB)
	tv := archsimd.BroadcastUint64x8(thr)
	s30 := archsimd.BroadcastUint64x8(30)
	s27 := archsimd.BroadcastUint64x8(27)
	s31 := archsimd.BroadcastUint64x8(31)
	s40 := archsimd.BroadcastUint64x8(40)
	abs := archsimd.BroadcastUint32x8(0x7fffffff)
	var zf, fin archsimd.Float32x8
	var bl, bh, al, ah archsimd.Float64x4
	for j := 0; j < n8; j += 8 {
		var xv, bv archsimd.Float32x8
		if wide {
			xv = archsimd.LoadUint16x8Slice(x16[j:]).ExtendToUint32().ShiftAllLeft(16).AsFloat32x8()
			bv = archsimd.LoadUint16x8Slice(b16[j:]).ExtendToUint32().ShiftAllLeft(16).AsFloat32x8()
		} else {
			xv = archsimd.LoadFloat32x8Slice(x32[j:])
			bv = archsimd.LoadFloat32x8Slice(b32[j:])
		}
		t := xv.Sub(bv)
		fin = fin.Add(t.Mul(zf))
		a := t.AsUint32x8().And(abs).AsFloat32x8()
		bl = bl.Add(a.GetLo().ConvertToFloat64())
		bh = bh.Add(a.GetHi().ConvertToFloat64())
		h := z.Xor(z.ShiftRight(s30)).Mul(c1)
		h = h.Xor(h.ShiftRight(s27)).Mul(c2)
		h = h.Xor(h.ShiftRight(s31))
		k := a.Masked(archsimd.Mask32x8FromBits(h.ShiftRight(s40).Less(tv).ToBits()))
		al = al.Add(k.GetLo().ConvertToFloat64())
		ah = ah.Add(k.GetHi().ConvertToFloat64())
		z = z.Add(step)
	}
	var bs, as [8]float64
	bl.Store((*[4]float64)(bs[:4]))
	bh.Store((*[4]float64)(bs[4:]))
	al.Store((*[4]float64)(as[:4]))
	ah.Store((*[4]float64)(as[4:]))
	// The clear goes after the branch (see vec's finite).
	if fin.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		return 0, 0, false
	}
	archsimd.ClearAVXUpperBits()
	return dareSumsTail(x32, b32, x16, b16, key, start, thr, n8, &bs, &as)
}
