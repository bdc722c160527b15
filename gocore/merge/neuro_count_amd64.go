//go:build goexperiment.simd && amd64

package merge

import (
	"math/bits"
	"simd/archsimd"
	"unsafe"

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
// eight entries the magnitudes are widened to float64 and added to their
// lanes of vec.SumF64 (eight accumulators of four lanes, rotated by two
// after each group so that the pair in front always holds the next
// group's lanes), the lanes above hi packed to abv[k:] by one permutation
// (a full 8-lane store: abv[k+8:] is written over by the next groups) and
// counted, and the candidates, in one lane group of eight or so at
// MaskRate ½, taken from the stored lanes. As in package vec, no scalar
// float instruction runs between the first vector instruction and
// archsimd.ClearAVXUpperBits (the AVX→SSE transition penalty): lanes are
// read as integers.
func countSumsVec(x, b []float32, lo, hi uint32, cands []uint32, abv []float32, sl *vec.SumLanes) (int, []uint32, bool) {
	// Signed lane compares order magnitudes (≤ 0x7fffffff) correctly; a hi
	// beyond them is the same as 0x7fffffff. A lo beyond them (a window
	// that only counts) takes the scalar loop.
	if !vec.Accelerated() || lo > hi || lo > 0x7fffffff {
		return countSumsGo(x, b, lo, hi, cands, abv, sl)
	}
	if countSums512 && len(x) >= 16 {
		return countSumsVec512(x, b, lo, hi, cands, abv, sl)
	}
	hiC := min(hi, 0x7fffffff)
	n := len(x) &^ 7
	lv := archsimd.BroadcastInt32x8(int32(lo))
	hv := archsimd.BroadcastInt32x8(int32(hiC))
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	var lanes [8]int32
	var zf, acc archsimd.Float32x8
	var s0, s1, s2, s3, s4, s5, s6, s7 archsimd.Float64x4
	k := 0
	for j := 0; j < n; j += 8 {
		xv := archsimd.LoadFloat32x8Slice(x[j:])
		acc = acc.Add(xv.Mul(zf))
		a := xv.Sub(archsimd.LoadFloat32x8Slice(b[j:])).AsInt32x8().And(abs)
		af := a.AsFloat32x8()
		s0 = s0.Add(af.GetLo().ConvertToFloat64())
		s1 = s1.Add(af.GetHi().ConvertToFloat64())
		s0, s1, s2, s3, s4, s5, s6, s7 = s2, s3, s4, s5, s6, s7, s0, s1
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
	// The front pair holds the lanes of entry n mod 32 and on: undo the
	// rotation by (n/8) mod 4 pairs.
	acs := [4][2]archsimd.Float64x4{{s0, s1}, {s2, s3}, {s4, s5}, {s6, s7}}
	r := (n / 8) & 3
	for i := range acs {
		g := (i + r) & 3 // lane group of front pair i
		acs[i][0].Store((*[4]float64)(sl[8*g : 8*g+4]))
		acs[i][1].Store((*[4]float64)(sl[8*g+4 : 8*g+8]))
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
		return k, cands, fin
	}
	kt, cands, ok := countSumsFrom(x, b, lo, hi, cands, abv[k:], sl, n)
	return k + kt, cands, fin && ok
}

// countSums512: countSumsVec512's compresses and 16-lane masks need
// AVX-512.
var countSums512 = vec.Accelerated() && archsimd.X86.AVX512()

// countSumsVec512 is countSumsVec with 16 lanes (AVX-512) and without
// branches on the data: the magnitudes above hi and the candidates are
// packed by VPCOMPRESSD in lane (index) order, each group stored whole at
// the end of its list (the next group writes over the unused lanes), the
// magnitudes' sum lanes are four accumulators of eight swapped by halves
// after each group, and the finiteness test is the largest |x| bit
// pattern below +Inf's. The candidates' list is grown once beforehand to
// hold every entry.
func countSumsVec512(x, b []float32, lo, hi uint32, cands []uint32, abv []float32, sl *vec.SumLanes) (int, []uint32, bool) {
	n := len(x) &^ 15
	c0 := len(cands)
	if cap(cands)-c0 < n {
		cands = append(make([]uint32, 0, c0+len(x)+16), cands...)
	}
	if len(b) < n || len(abv) < n {
		panic("merge.countSumsVec512: b or abv shorter than x")
	}
	hiC := min(hi, 0x7fffffff)
	lv := archsimd.BroadcastInt32x16(int32(lo))
	hv := archsimd.BroadcastInt32x16(int32(hiC))
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	var top archsimd.Int32x16 // the largest |x| bits
	var s0, s1, s2, s3 archsimd.Float64x8
	// The loop addresses its vectors by pointer (the lengths are checked
	// above; k ≤ j and kc ≤ j, so a whole group fits) and counts lanes with
	// ones16: slice expressions and bits.OnesCount16 (a call on CPUs
	// without POPCNT) made the register allocator keep j, k and the vectors
	// on the stack.
	xp, bp := unsafe.Pointer(unsafe.SliceData(x)), unsafe.Pointer(unsafe.SliceData(b))
	ap := unsafe.Pointer(unsafe.SliceData(abv))
	cp := unsafe.Pointer(unsafe.SliceData(cands[c0:]))
	var k, kc uintptr // bytes packed into abv and the candidates
	for o := uintptr(0); o < uintptr(n)*4; o += 64 {
		xv := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(xp, o)))
		top = top.Max(xv.AsInt32x16().And(abs))
		a := xv.Sub(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(bp, o)))).AsInt32x16().And(abs)
		af := a.AsFloat32x16()
		s0 = s0.Add(af.GetLo().ConvertToFloat64())
		s1 = s1.Add(af.GetHi().ConvertToFloat64())
		s0, s1, s2, s3 = s2, s3, s0, s1
		gt := a.Greater(hv)
		a.Compress(gt).AsFloat32x16().Store((*[16]float32)(unsafe.Add(ap, k)))
		k += uintptr(ones16(gt.ToBits())) * 4
		in := a.GreaterEqual(lv).And(a.LessEqual(hv))
		a.AsUint32x16().Compress(in).Store((*[16]uint32)(unsafe.Add(cp, kc)))
		kc += uintptr(ones16(in.ToBits())) * 4
	}
	// The front pair holds the lanes of entry n mod 32 and on.
	if n&16 != 0 {
		s0, s1, s2, s3 = s2, s3, s0, s1
	}
	s0.Store((*[8]float64)(sl[0:8]))
	s1.Store((*[8]float64)(sl[8:16]))
	s2.Store((*[8]float64)(sl[16:24]))
	s3.Store((*[8]float64)(sl[24:32]))
	fin := top.Greater(archsimd.BroadcastInt32x16(0x7f7fffff)).ToBits() == 0
	archsimd.ClearAVXUpperBits()
	kk := int(k / 4)
	cands = cands[:c0+int(kc/4)]
	if n == len(x) {
		return kk, cands, fin
	}
	kt, cands, ok := countSumsFrom(x, b, lo, hi, cands, abv[kk:], sl, n)
	return kk + kt, cands, fin && ok
}
