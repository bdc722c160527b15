//go:build goexperiment.simd && amd64

package merge

import (
	"math"
	"math/bits"
	"simd/archsimd"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// DELLA's vector loops. As in package vec, no scalar float instruction runs
// between a loop's first vector instruction and archsimd.ClearAVXUpperBits
// (the AVX→SSE transition penalty of Intel CPUs), vector values leave the
// loop through stores, and shift counts are vectors (ShiftAllRight by a
// count compiles to a legacy SSE MOVQ). Each loop has a plain-Go twin
// (della_rows.go) with the same results bit for bit.

// dellaVector512: the random draw's 64-bit lane multiply (VPMULLQ), the
// compress of the band and the keep masks from bits need AVX-512.
var dellaVector512 = vec.Accelerated() && archsimd.X86.AVX512()

// dellaKeys sets keys[j] to |row[j]|'s bit pattern and returns their
// minimum and maximum (AVX2).
func dellaKeys(row []float32, keys []uint32) (kmin, kmax uint32) {
	n8 := len(row) &^ 7
	if !vec.Accelerated() || n8 == 0 {
		return dellaKeysGo(row, keys)
	}
	keys = keys[:len(row)]
	if dellaVector512 && len(row) >= 16 {
		return dellaKeys16(row, keys)
	}
	absMask := archsimd.BroadcastUint32x8(0x7fffffff)
	k := archsimd.LoadFloat32x8Slice(row).AsUint32x8().And(absMask)
	lo, hi := k, k
	for j := 0; j < n8; j += 8 {
		k := archsimd.LoadFloat32x8Slice(row[j:]).AsUint32x8().And(absMask)
		k.StoreSlice(keys[j:])
		lo, hi = lo.Min(k), hi.Max(k)
	}
	var l, h [8]uint32
	lo.Store(&l)
	hi.Store(&h)
	archsimd.ClearAVXUpperBits()
	kmin, kmax = dellaKeysGo(row[n8:], keys[n8:])
	for i := range 8 {
		kmin, kmax = min(kmin, l[i]), max(kmax, h[i])
	}
	return kmin, kmax
}

// dellaKeys16 is dellaKeys with 16 lanes (AVX-512), for rows of 16 or
// more entries.
func dellaKeys16(row []float32, keys []uint32) (kmin, kmax uint32) {
	n16 := len(row) &^ 15
	absMask := archsimd.BroadcastUint32x16(0x7fffffff)
	k := archsimd.LoadFloat32x16Slice(row).AsUint32x16().And(absMask)
	lo, hi := k, k
	for j := 0; j < n16; j += 16 {
		k := archsimd.LoadFloat32x16Slice(row[j:]).AsUint32x16().And(absMask)
		k.StoreSlice(keys[j:])
		lo, hi = lo.Min(k), hi.Max(k)
	}
	var l, h [16]uint32
	lo.Store(&l)
	hi.Store(&h)
	archsimd.ClearAVXUpperBits()
	kmin, kmax = dellaKeysGo(row[n16:], keys[n16:])
	for i := range 16 {
		kmin, kmax = min(kmin, l[i]), max(kmax, h[i])
	}
	return kmin, kmax
}

// dellaDraw sets u[j] = U_j = rng.Bits(key, start+j)>>40 for j < len(u),
// sets bit j of words when U_j < lo (kept whatever the rank) and bit j of
// band when lo ≤ U_j < hi, and reports whether any band bit is set. The
// bits must be 0 on entry. Lane l of the state holds
// key + (start+j+l+1)·golden, advanced by 8·golden per step (AVX-512).
func dellaDraw(key, start uint64, lo, hi uint32, u []uint32, words, band []uint64) bool {
	n := len(u)
	n8 := n &^ 7
	if !dellaVector512 || n8 == 0 {
		return dellaDrawGo(key, start, lo, hi, u, words, band)
	}
	var golden uint64 = rng.Golden
	var z0 [8]uint64
	for l := range z0 {
		z0[l] = key + (start+uint64(l)+1)*golden
	}
	z := archsimd.LoadUint64x8(&z0)
	step := archsimd.BroadcastUint64x8(8 * golden)
	c1 := archsimd.BroadcastUint64x8(0xBF58476D1CE4E5B9)
	c2 := archsimd.BroadcastUint64x8(0x94D049BB133111EB)
	lov := archsimd.BroadcastUint64x8(uint64(lo))
	hiv := archsimd.BroadcastUint64x8(uint64(hi))
	s30 := archsimd.BroadcastUint64x8(30)
	s27 := archsimd.BroadcastUint64x8(27)
	s31 := archsimd.BroadcastUint64x8(31)
	s40 := archsimd.BroadcastUint64x8(40)
	var wk, wb, any uint64 // the current words of words and band
	for j := 0; j < n8; j += 8 {
		h := z.Xor(z.ShiftRight(s30)).Mul(c1)
		h = h.Xor(h.ShiftRight(s27)).Mul(c2)
		x := h.Xor(h.ShiftRight(s31)).ShiftRight(s40)
		x.TruncateToUint32().StoreSlice(u[j:])
		below := x.Less(lov).ToBits()
		in := x.Less(hiv).ToBits() &^ below
		wk |= uint64(below) << (j & 63)
		wb |= uint64(in) << (j & 63)
		if j&63 == 56 {
			words[j>>6], band[j>>6] = wk, wb
			any |= wb
			wk, wb = 0, 0
		}
		z = z.Add(step)
	}
	archsimd.ClearAVXUpperBits()
	if n8&63 != 0 {
		words[n8>>6], band[n8>>6] = wk, wb
		any |= wb
	}
	if dellaDrawFrom(key, start, lo, hi, u, words, band, n8) {
		any = 1
	}
	return any != 0
}

// dellaAbsSum is Σ|x| in float64 over 8 lanes: lane l sums the entries
// j ≡ l (mod 8) in index order, and the lanes are added pairwise,
// ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)) (AVX2). The result does not depend
// on the build, the CPU or the thread count.
func dellaAbsSum(x []float32) float64 {
	n8 := len(x) &^ 7
	if !vec.Accelerated() || n8 == 0 {
		return dellaAbsSumGo(x)
	}
	absMask := archsimd.BroadcastUint32x4(0x7fffffff)
	a0 := archsimd.LoadFloat32x4Slice(x).AsUint32x4().And(absMask).AsFloat32x4().ConvertToFloat64()
	a1 := archsimd.LoadFloat32x4Slice(x[4:]).AsUint32x4().And(absMask).AsFloat32x4().ConvertToFloat64()
	for j := 8; j < n8; j += 8 {
		a0 = a0.Add(archsimd.LoadFloat32x4Slice(x[j:]).AsUint32x4().And(absMask).AsFloat32x4().ConvertToFloat64())
		a1 = a1.Add(archsimd.LoadFloat32x4Slice(x[j+4:]).AsUint32x4().And(absMask).AsFloat32x4().ConvertToFloat64())
	}
	var acc [8]float64
	a0.Store((*[4]float64)(acc[:4]))
	a1.Store((*[4]float64)(acc[4:]))
	archsimd.ClearAVXUpperBits()
	return dellaAbsSumTail(x, n8, &acc)
}

// dellaApplyBits keeps entry j of tau, multiplied by scale, when bit j of
// words is set, and sets it to +0 otherwise (AVX-512).
func dellaApplyBits(tau []float32, words []uint64, scale float32) {
	n8 := len(tau) &^ 7
	if !dellaVector512 || n8 == 0 {
		dellaApplyBitsGo(tau, words, scale)
		return
	}
	sv := archsimd.BroadcastFloat32x8(scale)
	for j := 0; j < n8; j += 8 {
		m := archsimd.Mask32x8FromBits(uint8(words[j>>6] >> (j & 63)))
		archsimd.LoadFloat32x8Slice(tau[j:]).Mul(sv).Masked(m).StoreSlice(tau[j:])
	}
	archsimd.ClearAVXUpperBits()
	for j := n8; j < len(tau); j++ {
		if words[j>>6]>>(j&63)&1 != 0 {
			tau[j] *= scale
		} else {
			tau[j] = 0
		}
	}
}

// dellaRank is entry j's ascending rank among keys, ties by lower index:
// #{i < j: keys[i] ≤ keys[j]} + #{i > j: keys[i] < keys[j]} (AVX2; keys
// below 2³¹).
func dellaRank(keys []uint32, j int) uint32 {
	n8 := len(keys) &^ 7
	if !vec.Accelerated() || n8 == 0 {
		return dellaRankGo(keys, j)
	}
	if dellaVector512 && len(keys) >= 16 {
		return dellaRank16(keys, j)
	}
	j8 := min(j&^7, n8)
	var le, lt int
	kv := archsimd.BroadcastInt32x8(int32(keys[j]))
	for i := 0; i < j8; i += 8 {
		le += 8 - bits.OnesCount8(archsimd.LoadUint32x8Slice(keys[i:]).AsInt32x8().Greater(kv).ToBits())
	}
	for i := j8 + 8; i < n8; i += 8 {
		lt += bits.OnesCount8(kv.Greater(archsimd.LoadUint32x8Slice(keys[i:]).AsInt32x8()).ToBits())
	}
	archsimd.ClearAVXUpperBits()
	r := uint32(le + lt)
	k := keys[j]
	for i := j8; i < min(j8+8, len(keys)); i++ {
		if keys[i] < k || keys[i] == k && i < j {
			r++
		}
	}
	for i := max(j8+8, n8); i < len(keys); i++ {
		if keys[i] < k {
			r++
		}
	}
	return r
}

// dellaRank16 is dellaRank with 16 lanes (AVX-512), for 16 keys or more:
// the counts are kept in the lanes of two vectors (a compare's lanes are
// −1 or 0) and added up once.
func dellaRank16(keys []uint32, j int) uint32 {
	n16 := len(keys) &^ 15
	j16 := min(j&^15, n16) // the block of j, or the tail
	k := keys[j]
	kv := archsimd.BroadcastUint32x16(k)
	var le, lt archsimd.Int32x16
	for i := 0; i < j16; i += 16 {
		le = le.Sub(archsimd.LoadUint32x16Slice(keys[i:]).LessEqual(kv).ToInt32x16())
	}
	for i := j16 + 16; i < n16; i += 16 {
		lt = lt.Sub(archsimd.LoadUint32x16Slice(keys[i:]).Less(kv).ToInt32x16())
	}
	var c [16]int32
	le.Add(lt).Store(&c)
	archsimd.ClearAVXUpperBits()
	var r uint32
	for _, x := range c {
		r += uint32(x)
	}
	for i := j16; i < min(j16+16, len(keys)); i++ {
		if keys[i] < k || keys[i] == k && i < j {
			r++
		}
	}
	for i := max(j16+16, n16); i < len(keys); i++ {
		if keys[i] < k {
			r++
		}
	}
	return r
}

// dellaKeptAbsSum is dellaAbsSum of tau after dellaApplyBits(tau, words, 1),
// without changing tau (AVX-512).
func dellaKeptAbsSum(tau []float32, words []uint64) float64 {
	n8 := len(tau) &^ 7
	if !dellaVector512 || n8 == 0 {
		return dellaKeptAbsSumGo(tau, words)
	}
	absMask := archsimd.BroadcastUint32x8(0x7fffffff)
	m := archsimd.Mask32x8FromBits(uint8(words[0]))
	acc := archsimd.LoadFloat32x8Slice(tau).AsUint32x8().And(absMask).Masked(m).AsFloat32x8().ConvertToFloat64()
	for j := 8; j < n8; j += 8 {
		m := archsimd.Mask32x8FromBits(uint8(words[j>>6] >> (j & 63)))
		acc = acc.Add(archsimd.LoadFloat32x8Slice(tau[j:]).AsUint32x8().And(absMask).Masked(m).AsFloat32x8().ConvertToFloat64())
	}
	var lanes [8]float64
	acc.Store(&lanes)
	archsimd.ClearAVXUpperBits()
	return dellaKeptAbsSumTail(tau, words, n8, &lanes)
}

// dellaSubAbsSum sets tau = x − b and returns dellaAbsSum(tau), or false
// when x holds a NaN or ±Inf (x·0 is NaN exactly then): the load, the
// check and the first sum of DELLA's preparation in one pass (AVX2).
func dellaSubAbsSum(tau, x, b []float32) (float64, bool) {
	n8 := len(tau) &^ 7
	if !vec.Accelerated() || n8 == 0 {
		return dellaSubAbsSumGo(tau, x, b)
	}
	x, b = x[:len(tau)], b[:len(tau)]
	absMask := archsimd.BroadcastUint32x8(0x7fffffff)
	// Zero values, not BroadcastFloat32x8(0): that compiles to a legacy
	// SSE XORPS.
	var zero, nan archsimd.Float32x8
	var a0, a1 archsimd.Float64x4
	for j := 0; j < n8; j += 8 {
		xv := archsimd.LoadFloat32x8Slice(x[j:])
		t := xv.Sub(archsimd.LoadFloat32x8Slice(b[j:]))
		t.StoreSlice(tau[j:])
		nan = nan.Add(xv.Mul(zero))
		at := t.AsUint32x8().And(absMask).AsFloat32x8()
		a0 = a0.Add(at.GetLo().ConvertToFloat64())
		a1 = a1.Add(at.GetHi().ConvertToFloat64())
	}
	var acc [8]float64
	a0.Store((*[4]float64)(acc[:4]))
	a1.Store((*[4]float64)(acc[4:]))
	// The clear goes after the branch (see vec's finite).
	if nan.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		return 0, false
	}
	archsimd.ClearAVXUpperBits()
	return dellaSubAbsSumTail(tau, x, b, n8, &acc)
}

// dellaPrefix replaces S[b] by S[0] + … + S[b] (AVX-512): per block of 16,
// four shifted adds (lanes moved up by 1, 2, 4, 8, zeros shifted in) and the
// carry of the blocks before, lane 15 broadcast.
func dellaPrefix(S []uint32) {
	n16 := len(S) &^ 15
	if !dellaVector512 || n16 == 0 {
		dellaPrefixGo(S)
		return
	}
	var i1, i2, i4, i8, i15 [16]uint32
	for l := range uint32(16) {
		shift := func(s uint32) uint32 {
			if l >= s {
				return l - s // from the block
			}
			return 16 // the zero vector's lane 0
		}
		i1[l], i2[l], i4[l], i8[l], i15[l] = shift(1), shift(2), shift(4), shift(8), 15
	}
	p1, p2 := archsimd.LoadUint32x16(&i1), archsimd.LoadUint32x16(&i2)
	p4, p8 := archsimd.LoadUint32x16(&i4), archsimd.LoadUint32x16(&i8)
	p15 := archsimd.LoadUint32x16(&i15)
	var zero, carry archsimd.Uint32x16
	for b := 0; b < n16; b += 16 {
		x := archsimd.LoadUint32x16Slice(S[b:])
		x = x.Add(x.ConcatPermute(zero, p1))
		x = x.Add(x.ConcatPermute(zero, p2))
		x = x.Add(x.ConcatPermute(zero, p4))
		x = x.Add(x.ConcatPermute(zero, p8)).Add(carry)
		x.StoreSlice(S[b:])
		carry = x.ConcatPermute(zero, p15)
	}
	var c [16]uint32
	carry.Store(&c)
	archsimd.ClearAVXUpperBits()
	sum := c[0]
	for b := n16; b < len(S); b++ {
		sum += S[b]
		S[b] = sum
	}
}

// dellaRowsFast: dellaChunkRows' loops are vector loops with AVX-512 only;
// with AVX2 alone the passes over the chunk (AVX2) are faster.
var dellaRowsFast = dellaVector512 || !vec.Accelerated()

// dellaFused: the one-pass merge (della_merge.go) needs AVX-512's masks
// from bits; without them the general path's vector loops are faster than
// the Go twin.
var dellaFused = dellaVector512

// dellaMerge writes chunk results out[j] = base[j] + λ·c[j] (see
// dellaMergeOp) and reports whether every result is finite: per 16 entries
// and model, τ = x − b, τ·f masked by the keep bits (dellaApplyBits),
// v = τ·w, then the election and disjoint mean of vec.DisjointMean or the
// sum of vec.WeightedSum, and b + λ·c (AVX-512; lane by lane the
// operations of the 8-lane loops it replaces).
func dellaMerge(out, base []float32, x [][]float32, op *dellaMergeOp) bool {
	T := len(x)
	n16 := len(out) &^ 15
	if !dellaVector512 || n16 == 0 || T > 8 {
		return dellaMergeGo(out, base, x, op)
	}
	base = base[:len(out)]
	var wv, sv, vv [8]archsimd.Float32x16
	var xs [8][]float32
	for m := range T {
		wv[m] = archsimd.BroadcastFloat32x16(op.w[m])
		sv[m] = archsimd.BroadcastFloat32x16(op.scale[m])
		xs[m] = x[m][:len(out)]
	}
	lamv := archsimd.BroadcastFloat32x16(op.lam)
	sign := archsimd.BroadcastInt32x16(-0x80000000)
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	// Zero values, not BroadcastFloat32x16(0) (a legacy SSE XORPS).
	var zi archsimd.Int32x16
	var zf, nan archsimd.Float32x16
	disjoint, norm := op.disjoint, op.norm
	words := op.words
	for j := 0; j < n16; j += 16 {
		b := archsimd.LoadFloat32x16Slice(base[j:])
		var sum archsimd.Float32x16
		for m := range T {
			t := archsimd.LoadFloat32x16Slice(xs[m][j:]).Sub(b)
			if ws := words[m]; ws != nil {
				k := archsimd.Mask32x16FromBits(uint16(ws[j>>6] >> (j & 63)))
				t = t.Mul(sv[m]).Masked(k)
			}
			v := t.Mul(wv[m])
			vv[m] = v
			if m == 0 {
				sum = v
			} else {
				sum = sum.Add(v)
			}
		}
		r := sum
		if disjoint {
			s := sum.AsInt32x16()
			// γ's sign bit, cleared where |sum| = 0.
			g := s.And(sign).Masked(s.And(abs).NotEqual(zi))
			var num, den archsimd.Float32x16
			for m := range T {
				agree := vv[m].AsInt32x16().Xor(g).Greater(zi)
				num = num.Add(vv[m].Masked(agree))
				den = den.Add(wv[m].Masked(agree))
			}
			r = num
			if norm {
				r = num.Div(den).Merge(num, den.NotEqual(zf))
			}
		}
		o := b.Add(lamv.Mul(r))
		o.StoreSlice(out[j:])
		nan = nan.Add(o.Mul(zf))
	}
	// The clear goes after the branch (see vec's finite).
	fin := true
	if nan.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		fin = false
	} else {
		archsimd.ClearAVXUpperBits()
	}
	if n16 < len(out) && !dellaMergeFrom(out, base, x, op, n16) {
		fin = false
	}
	return fin
}

// dellaBuckets sets bk[j] = (keys[j] − kmin) >> shift + 1: 1 + the
// bucket of entry j (S's index of its count), 16 lanes at a time
// (AVX-512).
func dellaBuckets(keys []uint32, kmin, shift uint32, bk []uint32) {
	n16 := len(keys) &^ 15
	if !dellaVector512 || n16 == 0 {
		dellaBucketsGo(keys, kmin, shift, bk)
		return
	}
	bk = bk[:len(keys)]
	kv := archsimd.BroadcastUint32x16(kmin)
	sv := archsimd.BroadcastUint32x16(shift)
	one := archsimd.BroadcastUint32x16(1)
	for j := 0; j < n16; j += 16 {
		archsimd.LoadUint32x16Slice(keys[j:]).Sub(kv).ShiftRight(sv).Add(one).StoreSlice(bk[j:])
	}
	archsimd.ClearAVXUpperBits()
	dellaBucketsGo(keys[n16:], kmin, shift, bk[n16:])
}

// dellaDrawCells is dellaDraw for a row whose band is split into cells
// (dellaScratch.cellBounds): it sets u[j] = U_j and, for U_j < lo, bit j of
// words (kept whatever the rank); for lo ≤ U_j < hi, c = (U_j − lo) >>
// shift, bit j of words when keys[j] ≥ cellHi[c] (kept) and bit j of amb
// when cellLo[c] ≤ keys[j] < cellHi[c] (the rank decides). It reports
// whether any amb bit is set. The bits must be 0 on entry. Two loops of 16
// entries, each with its constants in registers: the draws (dellaDrawU),
// then the decisions, the cell bounds looked up by a permute of two
// registers (AVX-512).
func dellaDrawCells(key, start uint64, lo, hi uint32, cellLo, cellHi *[dellaCells]uint32, shift uint32, keys, u []uint32, words, amb []uint64) bool {
	n16 := len(u) &^ 15
	if !dellaVector512 || n16 == 0 {
		return dellaDrawCellsGo(key, start, lo, hi, cellLo, cellHi, shift, keys, u, words, amb)
	}
	dellaDrawU(key, start, u[:n16])
	keys = keys[:len(u)]
	nw := (len(u) + 63) / 64
	// The bit words as 16-bit quarters (little-endian: bits 16h.. of a
	// word are its quarter h).
	w16 := unsafe.Slice((*uint16)(unsafe.Pointer(&words[0])), 4*nw)
	a16 := unsafe.Slice((*uint16)(unsafe.Pointer(&amb[0])), 4*nw)
	lov := archsimd.BroadcastUint32x16(lo)
	hiv := archsimd.BroadcastUint32x16(hi)
	sv := archsimd.BroadcastUint32x16(shift)
	clo0 := archsimd.LoadUint32x16((*[16]uint32)(cellLo[:16]))
	clo1 := archsimd.LoadUint32x16((*[16]uint32)(cellLo[16:]))
	chi0 := archsimd.LoadUint32x16((*[16]uint32)(cellHi[:16]))
	chi1 := archsimd.LoadUint32x16((*[16]uint32)(cellHi[16:]))
	var any uint16
	for j := 0; j < n16; j += 16 {
		x := archsimd.LoadUint32x16Slice(u[j:])
		k := archsimd.LoadUint32x16Slice(keys[j:])
		below := x.Less(lov).ToBits()
		in := x.Less(hiv).ToBits() &^ below
		c := x.Sub(lov).ShiftRight(sv)
		kh := k.GreaterEqual(chi0.ConcatPermute(chi1, c)).ToBits()
		kl := k.GreaterEqual(clo0.ConcatPermute(clo1, c)).ToBits()
		w16[j>>4] = below | in&kh
		open := in & kl &^ kh
		a16[j>>4] = open
		any |= open
	}
	archsimd.ClearAVXUpperBits()
	if dellaDrawCellsFrom(key, start, lo, hi, cellLo, cellHi, shift, keys, u, words, amb, n16) {
		any = 1
	}
	return any != 0
}

// dellaDrawU sets u[j] = U_j = rng.Bits(key, start+j)>>40 for j <
// len(u), a multiple of 16 (AVX-512): two chains of 8 states as in
// dellaDraw, the last xor-shift of the mix left out (it does not change
// the top 24 bits), the high halves of the 16 lanes gathered by one
// permute and shifted down by 8.
func dellaDrawU(key, start uint64, u []uint32) {
	var golden uint64 = rng.Golden
	var z0 [16]uint64
	var hiHalves [16]uint32
	for l := range z0 {
		z0[l] = key + (start+uint64(l)+1)*golden
		hiHalves[l] = uint32(2*l + 1)
	}
	za := archsimd.LoadUint64x8((*[8]uint64)(z0[:8]))
	zb := archsimd.LoadUint64x8((*[8]uint64)(z0[8:]))
	step := archsimd.BroadcastUint64x8(16 * golden)
	c1 := archsimd.BroadcastUint64x8(0xBF58476D1CE4E5B9)
	c2 := archsimd.BroadcastUint64x8(0x94D049BB133111EB)
	s30 := archsimd.BroadcastUint64x8(30)
	s27 := archsimd.BroadcastUint64x8(27)
	s8 := archsimd.BroadcastUint32x16(8)
	idx := archsimd.LoadUint32x16(&hiHalves)
	for j := 0; j+16 <= len(u); j += 16 {
		ha := za.Xor(za.ShiftRight(s30)).Mul(c1)
		hb := zb.Xor(zb.ShiftRight(s30)).Mul(c1)
		ha = ha.Xor(ha.ShiftRight(s27)).Mul(c2)
		hb = hb.Xor(hb.ShiftRight(s27)).Mul(c2)
		ha.AsUint32x16().ConcatPermute(hb.AsUint32x16(), idx).ShiftRight(s8).StoreSlice(u[j:])
		za, zb = za.Add(step), zb.Add(step)
	}
	archsimd.ClearAVXUpperBits()
}

// dellaSubKeys sets tau = x − b and keys[j] to |tau[j]|'s bits, adds
// |tau[j]| (in float64) to acc[j mod 8] in index order and returns the
// keys' least and greatest, or false when x holds a NaN or ±Inf (x·0 is
// NaN exactly then): dellaSubAbsSum and dellaKeys in one pass, 16 entries
// at a time, the low 8 then the high 8 added to the lanes (AVX-512).
func dellaSubKeys(tau, x, b []float32, keys []uint32, acc *[8]float64) (kmin, kmax uint32, ok bool) {
	n16 := len(tau) &^ 15
	if !dellaVector512 || n16 == 0 {
		return dellaSubKeysGo(tau, x, b, keys, acc)
	}
	x, b, keys = x[:len(tau)], b[:len(tau)], keys[:len(tau)]
	absMask := archsimd.BroadcastUint32x16(0x7fffffff)
	lo := absMask // above every key but the NaNs', which fail below
	var hi archsimd.Uint32x16
	// Zero values, not BroadcastFloat32x16(0) (a legacy SSE XORPS).
	var zero, nan archsimd.Float32x16
	a := archsimd.LoadFloat64x8(acc)
	for j := 0; j < n16; j += 16 {
		xv := archsimd.LoadFloat32x16Slice(x[j:])
		t := xv.Sub(archsimd.LoadFloat32x16Slice(b[j:]))
		t.StoreSlice(tau[j:])
		nan = nan.Add(xv.Mul(zero))
		k := t.AsUint32x16().And(absMask)
		k.StoreSlice(keys[j:])
		lo, hi = lo.Min(k), hi.Max(k)
		at := k.AsFloat32x16()
		a = a.Add(at.GetLo().ConvertToFloat64())
		a = a.Add(at.GetHi().ConvertToFloat64())
	}
	a.Store(acc)
	if kmin, kmax, ok = dellaKeyRange16(lo, hi, nan); !ok {
		return 0, 0, false
	}
	return dellaSubKeysFrom(tau, x, b, keys, acc, n16, kmin, kmax)
}

// dellaKeyRange16 ends dellaSubKeys' 16-lane loops: the least of lo's
// lanes and the greatest of hi's, or false when nan's lanes hold a NaN
// (x held a NaN or ±Inf). It clears the upper halves of the registers
// before the scalar fold.
func dellaKeyRange16(lo, hi archsimd.Uint32x16, nan archsimd.Float32x16) (kmin, kmax uint32, ok bool) {
	var l, h [16]uint32
	lo.Store(&l)
	hi.Store(&h)
	// The clear goes after the branch (see vec's finite).
	if nan.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		return 0, 0, false
	}
	archsimd.ClearAVXUpperBits()
	kmin, kmax = math.MaxUint32, 0
	for i := range 16 {
		kmin, kmax = min(kmin, l[i]), max(kmax, h[i])
	}
	return kmin, kmax, true
}

// dellaSubKeysKept is dellaSubKeys of (tau, x, b, keys, acc) and
// dellaKeptAbsAdd of (prev, words, accPrev), prev as long as tau, in one
// loop: the two sums' chains of additions wait on each other's latency
// no more (AVX-512).
func dellaSubKeysKept(tau, x, b []float32, keys []uint32, acc *[8]float64, prev []float32, words []uint64, accPrev *[8]float64) (kmin, kmax uint32, ok bool) {
	n16 := len(tau) &^ 15
	if !dellaVector512 || n16 == 0 {
		return dellaSubKeysKeptGo(tau, x, b, keys, acc, prev, words, accPrev)
	}
	x, b, keys, prev = x[:len(tau)], b[:len(tau)], keys[:len(tau)], prev[:len(tau)]
	absMask := archsimd.BroadcastUint32x16(0x7fffffff)
	lo := absMask // above every key but the NaNs', which fail below
	var hi archsimd.Uint32x16
	// Zero values, not BroadcastFloat32x16(0) (a legacy SSE XORPS).
	var zero, nan archsimd.Float32x16
	a := archsimd.LoadFloat64x8(acc)
	ap := archsimd.LoadFloat64x8(accPrev)
	for j := 0; j < n16; j += 16 {
		xv := archsimd.LoadFloat32x16Slice(x[j:])
		t := xv.Sub(archsimd.LoadFloat32x16Slice(b[j:]))
		t.StoreSlice(tau[j:])
		nan = nan.Add(xv.Mul(zero))
		k := t.AsUint32x16().And(absMask)
		k.StoreSlice(keys[j:])
		lo, hi = lo.Min(k), hi.Max(k)
		at := k.AsFloat32x16()
		a = a.Add(at.GetLo().ConvertToFloat64())
		a = a.Add(at.GetHi().ConvertToFloat64())
		m := archsimd.Mask32x16FromBits(uint16(words[j>>6] >> (j & 63)))
		pt := archsimd.LoadFloat32x16Slice(prev[j:]).AsUint32x16().And(absMask).Masked(m).AsFloat32x16()
		ap = ap.Add(pt.GetLo().ConvertToFloat64())
		ap = ap.Add(pt.GetHi().ConvertToFloat64())
	}
	a.Store(acc)
	ap.Store(accPrev)
	if kmin, kmax, ok = dellaKeyRange16(lo, hi, nan); !ok {
		return 0, 0, false
	}
	dellaKeptAbsSumTail(prev, words, n16, accPrev)
	return dellaSubKeysFrom(tau, x, b, keys, acc, n16, kmin, kmax)
}

// dellaKeptAbsAdd adds |tau[j]| to acc[j mod 8], in index order, for the
// j whose bit in words is set (AVX-512).
func dellaKeptAbsAdd(tau []float32, words []uint64, acc *[8]float64) {
	n8 := len(tau) &^ 7
	if !dellaVector512 || n8 == 0 {
		dellaKeptAbsAddGo(tau, words, acc)
		return
	}
	absMask := archsimd.BroadcastUint32x8(0x7fffffff)
	a := archsimd.LoadFloat64x8(acc)
	for j := 0; j < n8; j += 8 {
		m := archsimd.Mask32x8FromBits(uint8(words[j>>6] >> (j & 63)))
		a = a.Add(archsimd.LoadFloat32x8Slice(tau[j:]).AsUint32x8().And(absMask).Masked(m).AsFloat32x8().ConvertToFloat64())
	}
	a.Store(acc)
	archsimd.ClearAVXUpperBits()
	dellaKeptAbsSumTail(tau, words, n8, acc)
}
