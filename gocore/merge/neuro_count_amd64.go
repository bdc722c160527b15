//go:build goexperiment.simd && amd64

package merge

import (
	"math/bits"
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// packLanes[m] lists the set lanes of the 8-bit mask m first, in lane
// order: the VPERMD indices that pack those lanes to the front.
var packLanes = func() (t [256][8]uint32) {
	for m := range 256 {
		k := 0
		for l := range 8 {
			if m&(1<<l) != 0 {
				t[m][k] = uint32(l)
				k++
			}
		}
	}
	return t
}()

// countSumsVec is countSumsGo with 8-lane vectors (AVX2): per group of
// eight entries the magnitudes are stored, the lanes above hi packed to
// abv[k:] by one permutation (a full 8-lane store: abv[k+8:] is written
// over by the next groups) and counted, and the candidates, in one lane
// group of eight or so at MaskRate ½, taken from the stored lanes. As in
// package vec, no scalar float instruction runs between the first vector
// instruction and archsimd.ClearAVXUpperBits (the AVX→SSE transition
// penalty): lanes are read as integers.
func countSumsVec(x, b []float32, lo, hi uint32, cands []uint32, mags, abv []float32) (int64, int, []uint32, bool) {
	// Signed lane compares order magnitudes (≤ 0x7fffffff) correctly; a hi
	// beyond them is the same as 0x7fffffff. A lo beyond them (a window
	// that only counts) takes the scalar loop.
	if !vec.Accelerated() || lo > hi || lo > 0x7fffffff {
		return countSumsGo(x, b, lo, hi, cands, mags, abv)
	}
	if countSums512 && len(x) >= 16 {
		return countSumsVec512(x, b, lo, hi, cands, mags, abv)
	}
	hiC := min(hi, 0x7fffffff)
	n := len(x) &^ 7
	lv := archsimd.BroadcastInt32x8(int32(lo))
	hv := archsimd.BroadcastInt32x8(int32(hiC))
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	var lanes [8]int32
	var zf, acc archsimd.Float32x8
	k := 0
	for j := 0; j < n; j += 8 {
		xv := archsimd.LoadFloat32x8Slice(x[j:])
		acc = acc.Add(xv.Mul(zf))
		a := xv.Sub(archsimd.LoadFloat32x8Slice(b[j:])).AsInt32x8().And(abs)
		a.AsFloat32x8().StoreSlice(mags[j:])
		gt := a.Greater(hv).ToBits()
		a.Permute(archsimd.LoadUint32x8(&packLanes[gt])).AsFloat32x8().StoreSlice(abv[k:])
		k += bits.OnesCount8(gt)
		if in := a.GreaterEqual(lv).And(a.LessEqual(hv)).ToBits(); in != 0 {
			a.Store(&lanes)
			for l := range 8 {
				if in&(1<<l) != 0 {
					cands = append(cands, uint32(lanes[l]))
				}
			}
		}
	}
	// The clear goes after the branch (see package vec's finite).
	fin := true
	if acc.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		fin = false
	} else {
		archsimd.ClearAVXUpperBits()
	}
	if n == len(x) {
		return int64(k), k, cands, fin
	}
	_, kt, cands, ok := countSumsGo(x[n:], b[n:], lo, hi, cands, mags[n:], abv[k:])
	k += kt
	return int64(k), k, cands, fin && ok
}

// countSums512: countSumsVec512's compresses and 16-lane masks need
// AVX-512.
var countSums512 = vec.Accelerated() && archsimd.X86.AVX512()

// countSumsVec512 is countSumsVec with 16 lanes (AVX-512) and without
// branches on the data: the magnitudes above hi and the candidates are
// packed by VPCOMPRESSD in lane (index) order, each group stored whole at
// the end of its list (the next group writes over the unused lanes), and
// the finiteness test is the largest |x| bit pattern below +Inf's. The
// candidates' list is grown once beforehand to hold every entry.
func countSumsVec512(x, b []float32, lo, hi uint32, cands []uint32, mags, abv []float32) (int64, int, []uint32, bool) {
	n := len(x) &^ 15
	c0 := len(cands)
	if cap(cands)-c0 < n {
		cands = append(make([]uint32, 0, c0+len(x)+16), cands...)
	}
	cs := cands[c0 : c0+n : c0+n]
	hiC := min(hi, 0x7fffffff)
	lv := archsimd.BroadcastInt32x16(int32(lo))
	hv := archsimd.BroadcastInt32x16(int32(hiC))
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	var top archsimd.Int32x16 // the largest |x| bits
	k, kc := 0, 0
	for j := 0; j < n; j += 16 {
		xv := archsimd.LoadFloat32x16Slice(x[j:])
		top = top.Max(xv.AsInt32x16().And(abs))
		a := xv.Sub(archsimd.LoadFloat32x16Slice(b[j:])).AsInt32x16().And(abs)
		a.AsFloat32x16().StoreSlice(mags[j:])
		gt := a.Greater(hv)
		// k ≤ j and kc ≤ j: a whole group fits.
		a.Compress(gt).AsFloat32x16().StoreSlice(abv[k:])
		k += bits.OnesCount16(gt.ToBits())
		in := a.GreaterEqual(lv).And(a.LessEqual(hv))
		a.AsUint32x16().Compress(in).StoreSlice(cs[kc:])
		kc += bits.OnesCount16(in.ToBits())
	}
	fin := top.Greater(archsimd.BroadcastInt32x16(0x7f7fffff)).ToBits() == 0
	archsimd.ClearAVXUpperBits()
	cands = cands[:c0+kc]
	if n == len(x) {
		return int64(k), k, cands, fin
	}
	_, kt, cands, ok := countSumsGo(x[n:], b[n:], lo, hi, cands, mags[n:], abv[k:])
	k += kt
	return int64(k), k, cands, fin && ok
}
