//go:build goexperiment.simd && amd64

package merge

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// countFlag is countFlagGo with 8-lane vectors (AVX2): per group of eight
// entries, the magnitudes of every model, then per window a count of the
// lanes above hi and, for the rare lanes inside the window, the candidates
// and the flags. As in package vec, no scalar float instruction runs
// between the first vector instruction and archsimd.ClearAVXUpperBits:
// lane values are read as integers (the AVX→SSE transition penalty).
func countFlag(x [][]float32, b []float32, fw *flagWindows, above []int64, cands [][]uint32, flags []uint8) bool {
	if !vec.Accelerated() || len(x) > 8 {
		return countFlagGo(x, b, fw, above, cands, flags)
	}
	for _, xm := range x {
		if len(xm) < len(b) {
			panic("merge.countFlag: input shorter than the base")
		}
	}
	T, W := len(x), fw.n
	n := len(b) &^ 7
	var lv, hv [maxFlagWindows]archsimd.Int32x8
	var fm [maxFlagWindows]uint8
	for i := range W {
		lv[i] = archsimd.BroadcastInt32x8(int32(fw.lo[i]))
		hv[i] = archsimd.BroadcastInt32x8(int32(fw.hi[i]))
		if fw.flag[i] {
			fm[i] = 0xff
		}
	}
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	var cnt [maxFlagWindows]archsimd.Int32x8 // per lane: at most len(b)/8 < 2³¹
	var lanes [8]int32
	var a [8]archsimd.Int32x8
	var zf, acc archsimd.Float32x8
	wm := fw.wm
	for j := 0; j < n; j += 8 {
		bv := archsimd.LoadFloat32x8Slice(b[j:])
		acc = acc.Add(bv.Mul(zf))
		for m := range T {
			xv := archsimd.LoadFloat32x8Slice(x[m][j:])
			acc = acc.Add(xv.Mul(zf))
			a[m] = xv.Sub(bv).AsInt32x8().And(abs)
		}
		var f uint8
		for i := range W {
			av := a[wm[i]]
			cnt[i] = cnt[i].Sub(av.Greater(hv[i]).ToInt32x8()) // −1 per lane above
			if in := av.GreaterEqual(lv[i]).And(av.LessEqual(hv[i])).ToBits(); in != 0 {
				av.Store(&lanes)
				for l := range 8 {
					if in&(1<<l) != 0 {
						cands[i] = append(cands[i], uint32(lanes[l]))
					}
				}
				f |= in & fm[i]
			}
		}
		flags[j>>3] = f
	}
	var cl [maxFlagWindows][8]int32
	for i := range W {
		cnt[i].Store(&cl[i])
	}
	// The clear goes after the branch (see package vec's finite).
	fin := true
	if acc.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		fin = false
	} else {
		archsimd.ClearAVXUpperBits()
	}
	for i := range W {
		for _, c := range cl[i] {
			above[i] += int64(c)
		}
	}
	if n == len(b) {
		return fin
	}
	tx := make([][]float32, T)
	for m, xm := range x {
		tx[m] = xm[n:]
	}
	return countFlagGo(tx, b[n:], fw, above, cands, flags[n>>3:]) && fin
}

// countFlagMerge is countFlag and vec.MergeTasks(out, b, x, p) in one
// loop: the magnitudes that the windows count are the ones the bands
// test, and the chunk is read once. It handles the one-pass path's
// provisional merges: bands whose cuts have no tie allowance (Allow ≤ 0),
// no Scale, p.Check unset (TALL masks included); for anything else, or without
// AVX2, it reports ok = false and does nothing. The combination is
// MergeTasks' vector code, operation for operation, so the bits are
// MergeTasks'. fin reports whether b and every x[m] are finite, rfin
// whether every result is.
func countFlagMerge(out, b []float32, x [][]float32, fw *flagWindows, above []int64, cands [][]uint32, flags []uint8, p *vec.TaskMerge) (fin, rfin, ok bool) {
	T := len(x)
	if !vec.Accelerated() || T > 8 || p.Scale != nil || p.Check ||
		(p.TallLam != nil && len(p.TallLam) != T) ||
		len(p.Bands) != T || len(p.W) != T || len(out) != len(b) {
		return false, false, false
	}
	for _, bd := range p.Bands {
		if bd.In.Allow > 0 || bd.Out.Allow > 0 || bd.In.Bits > 0x7fffffff || bd.Out.Bits > 0x7fffffff {
			return false, false, false
		}
	}
	for _, xm := range x {
		if len(xm) < len(b) {
			panic("merge.countFlagMerge: input shorter than the base")
		}
	}
	W := fw.n
	n := len(b) &^ 7
	var lv, hv [maxFlagWindows]archsimd.Int32x8
	var fm [maxFlagWindows]uint8
	for i := range W {
		lv[i] = archsimd.BroadcastInt32x8(int32(fw.lo[i]))
		hv[i] = archsimd.BroadcastInt32x8(int32(fw.hi[i]))
		if fw.flag[i] {
			fm[i] = 0xff
		}
	}
	// The band thresholds, as MergeTasks: inside ⇔ a > thr, thr = bits
	// (no tie inside) or bits − 1 (every tie inside).
	var inThr, outThr [8]archsimd.Int32x8
	var wf [8]archsimd.Float32x8
	for m, bd := range p.Bands {
		it, ot := int32(bd.In.Bits), int32(bd.Out.Bits)
		if bd.In.Allow < 0 {
			it--
		}
		if bd.Out.Allow < 0 {
			ot--
		}
		inThr[m], outThr[m] = archsimd.BroadcastInt32x8(it), archsimd.BroadcastInt32x8(ot)
		wf[m] = archsimd.BroadcastFloat32x8(p.W[m])
	}
	lam := archsimd.BroadcastFloat32x8(p.Lam)
	div := archsimd.BroadcastFloat32x8(p.Div)
	consensus := p.TallLam != nil
	var tl [8]archsimd.Float32x8
	for m, l := range p.TallLam {
		tl[m] = archsimd.BroadcastFloat32x8(l)
	}
	kv := archsimd.BroadcastInt32x8(int32(min(max(p.K-1, -1), 8)))
	one := archsimd.BroadcastInt32x8(1)
	sign := archsimd.BroadcastInt32x8(-0x80000000)
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	disjoint, norm, divOn := p.Disjoint, p.Norm, p.DivOn
	var cnt [maxFlagWindows]archsimd.Int32x8
	var lanes [8]int32
	var a [8]archsimd.Int32x8
	var t, raw [8]archsimd.Float32x8
	var zi archsimd.Int32x8
	var zf, acc, racc archsimd.Float32x8
	wm := fw.wm
	for j := 0; j < n; j += 8 {
		bv := archsimd.LoadFloat32x8Slice(b[j:])
		acc = acc.Add(bv.Mul(zf))
		for m := range T {
			xv := archsimd.LoadFloat32x8Slice(x[m][j:])
			acc = acc.Add(xv.Mul(zf))
			v := xv.Sub(bv)
			raw[m] = v
			am := v.AsInt32x8().And(abs)
			a[m] = am
			keep := am.Greater(inThr[m]).ToInt32x8().AndNot(am.Greater(outThr[m]).ToInt32x8())
			t[m] = v.AsInt32x8().And(keep).AsFloat32x8()
		}
		var f uint8
		for i := range W {
			av := a[wm[i]]
			cnt[i] = cnt[i].Sub(av.Greater(hv[i]).ToInt32x8())
			if in := av.GreaterEqual(lv[i]).And(av.LessEqual(hv[i])).ToBits(); in != 0 {
				av.Store(&lanes)
				for l := range 8 {
					if in&(1<<l) != 0 {
						cands[i] = append(cands[i], uint32(lanes[l]))
					}
				}
				f |= in & fm[i]
			}
		}
		flags[j>>3] = f
		sum := t[0].Mul(wf[0])
		for m := 1; m < T; m++ {
			sum = sum.Add(t[m].Mul(wf[m]))
		}
		var c archsimd.Float32x8
		if disjoint {
			s := sum.AsInt32x8()
			g := s.And(sign).Masked(s.And(abs).NotEqual(zi))
			var num, den archsimd.Float32x8
			for m := range T {
				v := t[m].Mul(wf[m])
				agree := v.AsInt32x8().Xor(g).Greater(zi)
				num = num.Add(v.Masked(agree))
				den = den.Add(wf[m].Masked(agree))
			}
			c = num
			if norm {
				c = num.Div(den).Merge(num, den.NotEqual(zf))
			}
		} else {
			c = sum
			if divOn {
				c = c.Div(div)
			}
		}
		r := bv.Add(c.Mul(lam))
		if consensus {
			var votes archsimd.Int32x8
			for m := range T {
				rv := raw[m]
				ar := rv.AsInt32x8().And(abs).AsFloat32x8()
				ad := c.Sub(rv).AsInt32x8().And(abs).AsFloat32x8()
				votes = votes.Add(one.Masked(ar.GreaterEqual(tl[m].Mul(ad))))
			}
			r = r.Merge(bv, votes.Greater(kv))
		}
		racc = racc.Add(r.Mul(zf))
		r.StoreSlice(out[j:])
	}
	var cl [maxFlagWindows][8]int32
	for i := range W {
		cnt[i].Store(&cl[i])
	}
	// The clear goes after the branches (see package vec's finite).
	fin, rfin = true, true
	if acc.IsNaN().ToBits() != 0 {
		fin = false
	}
	if racc.IsNaN().ToBits() != 0 {
		rfin = false
	}
	archsimd.ClearAVXUpperBits()
	for i := range W {
		for _, c := range cl[i] {
			above[i] += int64(c)
		}
	}
	if n == len(b) {
		return fin, rfin, true
	}
	tx := make([][]float32, T)
	for m, xm := range x {
		tx[m] = xm[n:]
	}
	fin = countFlagGo(tx, b[n:], fw, above, cands, flags[n>>3:]) && fin
	rfin = vec.MergeTasks(out[n:], b[n:], tx, p) && rfin
	return fin, rfin, true
}
