//go:build goexperiment.simd && amd64

package merge

import (
	"math/bits"
	"simd/archsimd"
	"slices"
	"sync"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// PCB's two per-entry loops with 8-lane vectors (AVX2), bit for bit their
// plain-Go twins pcbBetaKeysGo and pcbMergeGo: the same float32 operations
// in the same order per lane, min/max as compares and blends like the
// twins' if statements. As in package vec, no scalar float instruction
// runs between the first vector instruction and archsimd.ClearAVXUpperBits
// (the AVX→SSE transition penalty): the scalar tails run after it.

// pcbBetaKeys writes dst[m][j] = orderKey(β_m[j]) for j < n, τ_m being
// xs[m] − base (xs the models) or, with base nil, xs[m] (the task vectors).
func pcbBetaKeys(dst [][]uint32, base []float32, xs [][]float32, cuts []pcbCut, n int) {
	if !vec.Accelerated() {
		pcbBetaKeysGo(dst, base, xs, cuts, 0, n)
		return
	}
	if pcbVector512 {
		nv := n &^ 15
		if nv > 0 {
			pcbBetaKeysX16(dst, base, xs, cuts, len(xs), nv, nil)
		}
		pcbBetaKeysGo(dst, base, xs, cuts, nv, n)
		return
	}
	nv := n &^ 7
	if nv > 0 {
		pcbBetaKeysX8(dst, base, xs, cuts, len(xs), nv)
	}
	pcbBetaKeysGo(dst, base, xs, cuts, nv, n)
}

// pcbLanes are one model's broadcast statistics.
type pcbLanes struct {
	lo, hi, span, cut, bspan, w archsimd.Float32x8
	clip, score                 bool // hi > lo; bmax > cut
}

// pcbLanesFor returns room for the models' statistics (buf when it is
// large enough) with the flags set: scalar float compares, which a kernel
// makes before its first vector instruction.
func pcbLanesFor(buf []pcbLanes, cuts []pcbCut) []pcbLanes {
	if len(buf) < len(cuts) {
		buf = make([]pcbLanes, len(cuts))
	}
	buf = buf[:len(cuts)]
	for m := range cuts {
		buf[m].clip = cuts[m].hi > cuts[m].lo
		buf[m].score = cuts[m].bmax > cuts[m].cut
	}
	return buf
}

// pcbBroadcast fills ls's vectors and returns with the upper halves
// clean: vector instructions only (c.hi − c.lo
// and c.bmax − c.cut as subtractions of the broadcasts, fields assigned
// one by one: a composite literal zeroes with legacy SSE stores).
func pcbBroadcast(ls []pcbLanes, cuts []pcbCut, w []float32) {
	for m := range ls {
		l, c := &ls[m], &cuts[m]
		l.lo = archsimd.BroadcastFloat32x8(c.lo)
		l.hi = archsimd.BroadcastFloat32x8(c.hi)
		l.span = l.hi.Sub(l.lo)
		l.cut = archsimd.BroadcastFloat32x8(c.cut)
		l.bspan = archsimd.BroadcastFloat32x8(c.bmax).Sub(l.cut)
		if w != nil {
			l.w = archsimd.BroadcastFloat32x8(w[m])
		}
	}
	archsimd.ClearAVXUpperBits() // the vectors are stored: clean for the caller
}

// pcbExpConsts are the constants of vec.Exp32x8 and vec.Tanh32x8.
var pcbExpConsts = sync.OnceValue(vec.NewExpConsts)

// pcbKeyX8 is orderKey on 8 lanes: the bits xor (sign ? all ones : the
// sign bit), the mask from an integer compare (no shift by a count).
func pcbKeyX8(b archsimd.Float32x8, zero archsimd.Int32x8, sign archsimd.Uint32x8) archsimd.Uint32x8 {
	bi := b.AsInt32x8()
	neg := bi.Less(zero).ToInt32x8().AsUint32x8()
	return bi.AsUint32x8().Xor(neg.Or(sign))
}

// pcbFromKeyX8 is fromOrderKey on 8 lanes: the key xor (top bit set ? the
// sign bit : all ones).
func pcbFromKeyX8(k archsimd.Uint32x8, zero archsimd.Int32x8, sign archsimd.Uint32x8) archsimd.Float32x8 {
	pos := k.AsInt32x8().GreaterEqual(zero).ToInt32x8().AsUint32x8() // top bit clear
	return k.Xor(pos.Or(sign)).AsFloat32x8()
}

// pcbClipX8 is pcbClip on 8 lanes.
func pcbClipX8(x archsimd.Float32x8, l *pcbLanes, abs archsimd.Uint32x8) archsimd.Float32x8 {
	v := x.AsUint32x8().And(abs).AsFloat32x8()
	v = v.Merge(l.lo, v.Greater(l.lo))
	return v.Merge(l.hi, v.Less(l.hi))
}

func pcbBetaKeysX8(dst [][]uint32, base []float32, xs [][]float32, cuts []pcbCut, T, n int) {
	// Scalar code first (zeroing, float compares and conversions: legacy
	// SSE), then vectors only.
	var buf [8]pcbLanes
	ls := pcbLanesFor(buf[:], cuts)
	tf := float32(T)
	pcbBroadcast(ls, cuts, nil)
	k := pcbExpConsts()
	tv := archsimd.BroadcastFloat32x8(tf)
	abs := archsimd.BroadcastUint32x8(1<<31 - 1)
	sign := archsimd.BroadcastUint32x8(1 << 31)
	var zi archsimd.Int32x8
	var zf archsimd.Float32x8
	sub := base != nil
	var b archsimd.Float32x8
	for j := 0; j < n; j += 8 {
		if sub {
			b = archsimd.LoadFloat32x8Slice(base[j:])
		}
		s := zf
		for _, xm := range xs {
			x := archsimd.LoadFloat32x8Slice(xm[j:])
			if sub {
				x = x.Sub(b)
			}
			s = s.Add(x)
		}
		for m, xm := range xs {
			l := &ls[m]
			x := archsimd.LoadFloat32x8Slice(xm[j:])
			if sub {
				x = x.Sub(b)
			}
			nx := zf
			if l.clip {
				nx = pcbClipX8(x, l, abs).Sub(l.lo).Div(l.span)
			}
			intra := vec.Exp32x8(tv.Mul(nx.Mul(nx)), k)
			inter := vec.Tanh32x8(x.Mul(s), k)
			pcbKeyX8(intra.Mul(inter), zi, sign).StoreSlice(dst[m][j:])
		}
	}
	archsimd.ClearAVXUpperBits()
}

// pcbMerge is eq. 6 over every entry of out, τ_m being xs[m] − base with
// sub, else xs[m], and β decoded from keys[m][off+j].
func pcbMerge(out, base []float32, xs [][]float32, sub bool, keys [][]uint32, off int, cuts []pcbCut, w []float32, lam float32) {
	n := len(out)
	if !vec.Accelerated() {
		pcbMergeGo(out, base, xs, sub, keys, off, cuts, w, lam, 0, n)
		return
	}
	if pcbVector512 {
		nv := n &^ 15
		if nv > 0 {
			pcbMergeX16(out, base, xs, sub, keys, off, cuts, w, lam, nv)
		}
		pcbMergeGo(out, base, xs, sub, keys, off, cuts, w, lam, nv, n)
		return
	}
	nv := n &^ 7
	if nv > 0 {
		pcbMergeX8(out, base, xs, sub, keys, off, cuts, w, lam, nv)
	}
	pcbMergeGo(out, base, xs, sub, keys, off, cuts, w, lam, nv, n)
}

func pcbMergeX8(out, base []float32, taus [][]float32, sub bool, keys [][]uint32, off int, cuts []pcbCut, w []float32, lam float32, n int) {
	var buf [8]pcbLanes
	ls := pcbLanesFor(buf[:], cuts)
	pcbBroadcast(ls, cuts, w)
	lv := archsimd.BroadcastFloat32x8(lam)
	abs := archsimd.BroadcastUint32x8(1<<31 - 1)
	sign := archsimd.BroadcastUint32x8(1 << 31)
	floor := archsimd.BroadcastFloat32x8(1e-12)
	var zi archsimd.Int32x8
	var zf archsimd.Float32x8
	for j := 0; j < n; j += 8 {
		num, den := zf, zf
		b := archsimd.LoadFloat32x8Slice(base[j:])
		for m, tau := range taus {
			l := &ls[m]
			x := archsimd.LoadFloat32x8Slice(tau[j:])
			if sub {
				x = x.Sub(b)
			}
			sc := zf
			if l.score {
				beta := pcbFromKeyX8(archsimd.LoadUint32x8Slice(keys[m][off+j:]), zi, sign)
				sc = beta.Merge(l.cut, beta.Greater(l.cut)).Sub(l.cut).Div(l.bspan)
			}
			c := pcbClipX8(x, l, abs)
			// tc = c for x > 0, −c for x < 0, 0 otherwise.
			tc := c.Merge(zf, x.Greater(zf))
			tc = c.AsUint32x8().Xor(sign).AsFloat32x8().Merge(tc, x.Less(zf))
			num = num.Add(l.w.Mul(sc.Mul(tc)))
			den = den.Add(sc)
		}
		d := den.Merge(floor, den.Greater(floor))
		r := b.Add(lv.Mul(num.Div(d)))
		r.StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
}

// compressIdx[m] lists the set lanes of the 8-bit mask m first, in
// order: the VPERMD indices of a compress (AVX2 has no compress store).
var compressIdx = func() (t [256][8]uint32) {
	for m := range t {
		n := 0
		for l := range 8 {
			if m>>l&1 != 0 {
				t[m][n] = uint32(l)
				n++
			}
		}
	}
	return t
}()

// collectBins appends to li the keys whose top 11 bits are p and, with
// two, to lj those whose top 11 bits are q (p ≠ q): collectBinsGo with
// 8-lane compares (key AND the top-bits mask, no shift by a count) and a
// compress of the matching lanes (VPERMD by compressIdx, then a store of
// all 8 lanes into the list's spare room, of which the matching count is
// kept), in order. Integer code only.
func collectBins(keys []uint32, p, q uint32, two bool, li, lj []uint32) ([]uint32, []uint32) {
	if !vec.Accelerated() {
		return collectBinsGo(keys, p, q, two, li, lj)
	}
	n := len(keys) &^ 7
	li, lj = slices.Grow(li, 8), slices.Grow(lj, 8)
	top := archsimd.BroadcastUint32x8(uint32(keyBins-1) << keyTopShift)
	pv := archsimd.BroadcastUint32x8(p << keyTopShift)
	qv := archsimd.BroadcastUint32x8(q << keyTopShift)
	if !two {
		qv = archsimd.BroadcastUint32x8(^uint32(0)) // no masked key equals it
	}
	for j := 0; j < n; j += 8 {
		x := archsimd.LoadUint32x8Slice(keys[j:])
		k := x.And(top)
		mp, mq := k.Equal(pv).ToBits(), k.Equal(qv).ToBits()
		if mp|mq == 0 {
			continue
		}
		if mp != 0 {
			if cap(li)-len(li) < 8 {
				li = slices.Grow(li, max(8, len(li)))
			}
			x.Permute(archsimd.LoadUint32x8(&compressIdx[mp])).StoreSlice(li[len(li) : len(li)+8])
			li = li[:len(li)+bits.OnesCount8(mp)]
		}
		if mq != 0 {
			if cap(lj)-len(lj) < 8 {
				lj = slices.Grow(lj, max(8, len(lj)))
			}
			x.Permute(archsimd.LoadUint32x8(&compressIdx[mq])).StoreSlice(lj[len(lj) : len(lj)+8])
			lj = lj[:len(lj)+bits.OnesCount8(mq)]
		}
	}
	archsimd.ClearAVXUpperBits()
	return collectBinsGo(keys[n:], p, q, two, li, lj)
}

// pcbAbsKeys writes dst[m][j] = topk.AbsBits(taus[m][j]) for j < n: an
// integer AND per lane.
func pcbAbsKeys(dst [][]uint32, taus [][]float32, n int) {
	if !vec.Accelerated() {
		pcbAbsKeysGo(dst, taus, 0, n)
		return
	}
	nv := n &^ 7
	abs := archsimd.BroadcastUint32x8(1<<31 - 1)
	for m, tau := range taus {
		d := dst[m][:nv]
		for j := 0; j < nv; j += 8 {
			archsimd.LoadFloat32x8Slice(tau[j:]).AsUint32x8().And(abs).StoreSlice(d[j:])
		}
	}
	archsimd.ClearAVXUpperBits()
	pcbAbsKeysGo(dst, taus, nv, n)
}

// pcbScan counts the keys above hi and those in [lo, hi], appending the
// latter to cand in order, and returns the largest key (0 for none):
// pcbScanGo with 8-lane unsigned compares, a running unsigned maximum and
// the compress of collectBins. Integer code only.
func pcbScan(keys []uint32, lo, hi uint32, collect bool, cand []uint32) (above, inside int, mx uint32, out []uint32) {
	if !vec.Accelerated() {
		return pcbScanGo(keys, lo, hi, collect, cand)
	}
	n := len(keys) &^ 7
	lv, hv := archsimd.BroadcastUint32x8(lo), archsimd.BroadcastUint32x8(hi)
	var mv archsimd.Uint32x8
	for j := 0; j < n; j += 8 {
		x := archsimd.LoadUint32x8Slice(keys[j:])
		mv = mv.Max(x)
		ab := x.Greater(hv).ToBits()
		in := x.GreaterEqual(lv).ToBits() &^ ab
		above += bits.OnesCount8(ab)
		if in != 0 {
			inside += bits.OnesCount8(in)
			if !collect {
				continue
			}
			cand = pcbGrow(cand, 8)
			x.Permute(archsimd.LoadUint32x8(&compressIdx[in])).StoreSlice(cand[len(cand) : len(cand)+8])
			cand = cand[:len(cand)+bits.OnesCount8(in)]
		}
	}
	var ms [8]uint32
	mv.Store(&ms)
	archsimd.ClearAVXUpperBits()
	for _, x := range ms {
		mx = max(mx, x)
	}
	a, in, m, cand := pcbScanGo(keys[n:], lo, hi, collect, cand)
	return above + a, inside + in, max(mx, m), cand
}

// pcbBetaScan writes the β keys of j < n as pcbBetaKeys does and counts
// each model's keys against its bracket (st[m], as pcbScan does, the
// inside keys collected when st[m].collect): in the 16-lane kernel while
// the keys are in registers, else by pcbScan over the written keys.
func pcbBetaScan(dst [][]uint32, base []float32, xs [][]float32, cuts []pcbCut, n int, st []pcbScanState) {
	if !pcbVector512 {
		pcbBetaKeys(dst, base, xs, cuts, n)
		for m := range st {
			st[m].scan(dst[m][:n])
		}
		return
	}
	nv := n &^ 15
	if nv > 0 {
		pcbBetaKeysX16(dst, base, xs, cuts, len(xs), nv, st)
	}
	pcbBetaKeysGo(dst, base, xs, cuts, nv, n)
	for m := range st {
		st[m].scanGo(dst[m][nv:n])
	}
}

// pcbGrow makes room for at least n more keys in l (doubling).
func pcbGrow(l []uint32, n int) []uint32 {
	if cap(l)-len(l) < n {
		l = slices.Grow(l, max(n, len(l)))
	}
	return l
}

// pcbTailsScanSub offers every |x[j] − base[j]| to t, or reports false at
// the first non-finite x[j] (base is finite): pcbTailsScanSubGo with 16-
// or 8-lane subtractions and compares of the keys with t's thresholds (the
// upper one lowered to the largest finite key, so that a NaN or ±Inf τ
// always takes the scalar look), and the heaps' code for the rare groups
// with such a key (read back from the stored keys as integers).
func pcbTailsScanSub(x, base []float32, t *pcbTails) bool {
	if !vec.Accelerated() {
		return pcbTailsScanSubGo(x, base, t, 0, len(x))
	}
	if pcbVector512 {
		return pcbTailsScanSubX16(x, base, t)
	}
	n := len(x) &^ 7
	var kb [8]uint32
	tLo, tHi := t.thresholds()
	abs := archsimd.BroadcastUint32x8(1<<31 - 1)
	lo, hi := archsimd.BroadcastInt32x8(tLo), archsimd.BroadcastInt32x8(min(tHi, pcbFiniteKey-1))
	for j := 0; j < n; j += 8 {
		d := archsimd.LoadFloat32x8Slice(x[j:]).Sub(archsimd.LoadFloat32x8Slice(base[j:]))
		k := d.AsUint32x8().And(abs).AsInt32x8()
		m := k.Less(lo).Or(k.Greater(hi)).ToBits()
		if m == 0 {
			continue
		}
		k.AsUint32x8().Store(&kb)
		for ; m != 0; m &= m - 1 {
			l := bits.TrailingZeros8(m)
			if !pcbTailsOffer(t, kb[l], x, j+l) {
				archsimd.ClearAVXUpperBits()
				return false
			}
		}
		tLo, tHi = t.thresholds()
		lo, hi = archsimd.BroadcastInt32x8(tLo), archsimd.BroadcastInt32x8(min(tHi, pcbFiniteKey-1))
	}
	archsimd.ClearAVXUpperBits()
	return pcbTailsScanSubGo(x, base, t, n, len(x))
}

// pcbTailsOffer is pcbTailsScanSubGo's step for entry j, given its key k:
// integer code only (x[j]'s bits, not x[j] as a float).
func pcbTailsOffer(t *pcbTails, k uint32, x []float32, j int) bool {
	if k >= pcbFiniteKey {
		xb := *(*uint32)(unsafe.Pointer(&x[j]))
		if xb&0x7fffffff >= pcbFiniteKey {
			return false
		}
	}
	if a, b := t.thresholds(); int32(k) < a || int32(k) > b {
		t.add(k)
	}
	return true
}

// pcbMergeScored merges every entry of out as pcbMerge does, β computed
// in the kernel (pcbMergeScoredGo's bits) instead of decoded from kept
// keys: with the 16-lane kernels only (it reports false otherwise, and
// the caller scores into keys first).
func pcbMergeScored(out, base []float32, xs [][]float32, sub bool, cuts []pcbCut, w []float32, lam float32) bool {
	if !vec.Accelerated() || !pcbVector512 {
		return false
	}
	n := len(out)
	nv := n &^ 15
	if nv > 0 {
		pcbMergeScoredX16(out, base, xs, sub, cuts, w, lam, nv)
	}
	pcbMergeScoredGo(out, base, xs, sub, cuts, w, lam, nv, n)
	return true
}
