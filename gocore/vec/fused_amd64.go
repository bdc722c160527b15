//go:build goexperiment.simd && amd64

package vec

import (
	"math/bits"
	"simd/archsimd"
)

// The vector loops of fused.go. As everywhere in this package (see the note
// on accelerated in simd_amd64.go), no scalar float instruction runs between
// the first vector instruction and archsimd.ClearAVXUpperBits: float flags
// are decided by the caller, lane values are read as integers.

// laneKeep is the slow path of a band test: the lanes of magnitude bits a
// in order through both cuts (consuming their allowances), as all-ones
// (keep) or zero lanes in k. Integer code only.
func laneKeep(a, k *[lanes]int32, bd *Band) {
	for l, v := range a {
		in := bd.In.inside(uint32(v))
		o := bd.Out.inside(uint32(v))
		k[l] = 0
		if in && !o {
			k[l] = -1
		}
	}
}

func mergeTasks(out, base []float32, x [][]float32, p *TaskMerge) bool {
	if !accelerated || (p.Drop != nil && !dareVector) {
		if p.base16 != nil {
			return mergeTasksGoBF16(out, p)
		}
		return mergeTasksGo(out, base, x, p)
	}
	T := len(p.W)
	n := len(out) &^ (lanes - 1)
	wide := p.base16 != nil
	var wbuf, sbuf, lbuf [8]archsimd.Float32x8
	wv := broadcast(&wbuf, p.W)
	var sv, tl []archsimd.Float32x8
	if p.Scale != nil {
		sv = broadcast(&sbuf, p.Scale)
	}
	consensus := p.TallLam != nil
	if consensus {
		tl = broadcast(&lbuf, p.TallLam)
	}
	k := min(max(p.K-1, -1), 8)
	kv := archsimd.BroadcastInt32x8(int32(k))
	one := archsimd.BroadcastInt32x8(1)
	lam := archsimd.BroadcastFloat32x8(p.Lam)
	div := archsimd.BroadcastFloat32x8(p.Div)
	sign := archsimd.BroadcastInt32x8(-0x80000000)
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	bands := p.Bands
	// Per model: the cut bits, and the thresholds of the lane tests
	// "inside" ⇔ a > thr: thr = bits when ties are outside (Allow ≥ 0; a
	// tie with an allowance left takes laneKeep), bits − 1 when every tie
	// is inside (Allow < 0 stays so). Bits ≤ 0x7fffffff, so the signed
	// compares order magnitudes and bits − 1 does not wrap.
	var ib, ob, inThr, outThr [8]archsimd.Int32x8
	var outNothing [8]bool
	for m := range bands {
		bd := &bands[m]
		it, ot := int32(bd.In.Bits), int32(bd.Out.Bits)
		ib[m], ob[m] = archsimd.BroadcastInt32x8(it), archsimd.BroadcastInt32x8(ot)
		if bd.In.Allow < 0 {
			it--
		}
		if bd.Out.Allow < 0 {
			ot--
		}
		inThr[m], outThr[m] = archsimd.BroadcastInt32x8(it), archsimd.BroadcastInt32x8(ot)
		outNothing[m] = bd.Out == Nothing
	}
	divOn, disjoint, norm, check := p.DivOn, p.Disjoint, p.Norm, p.Check
	// DARE's draws (dareDrop's loop), set up only when asked: their
	// 512-bit instructions need AVX-512, which dareVector guarantees.
	drop := p.Drop != nil
	var dl dareLanes
	if drop {
		dl.init(p.Drop, p.Start)
	}
	// Zero values, not BroadcastFloat32x8(0) (a legacy SSE XORPS).
	var zi archsimd.Int32x8
	var zf, acc archsimd.Float32x8
	var t, raw [8]archsimd.Float32x8
	var ab, kb [lanes]int32
	for j := 0; j < n; j += lanes {
		var b archsimd.Float32x8
		if wide {
			b = archsimd.LoadUint16x8Slice(p.base16[j:]).ExtendToUint32().ShiftAllLeft(16).AsFloat32x8()
		} else {
			b = archsimd.LoadFloat32x8Slice(base[j:])
		}
		if check {
			acc = acc.Add(b.Mul(zf))
		}
		for m := range T {
			var xv archsimd.Float32x8
			if wide {
				xv = archsimd.LoadUint16x8Slice(p.x16[m][j:]).ExtendToUint32().ShiftAllLeft(16).AsFloat32x8()
			} else {
				xv = archsimd.LoadFloat32x8Slice(x[m][j:])
			}
			if check {
				acc = acc.Add(xv.Mul(zf))
			}
			v := xv.Sub(b)
			if consensus {
				raw[m] = v
			}
			if bands != nil {
				bd := &bands[m]
				a := v.AsInt32x8().And(abs)
				var inEq, outEq uint8
				if bd.In.Allow > 0 {
					inEq = a.Equal(ib[m]).ToBits()
				}
				if bd.Out.Allow > 0 {
					outEq = a.Equal(ob[m]).ToBits()
				}
				if inEq|outEq != 0 {
					// Ties at a cut with an allowance left. When the
					// allowance covers all of them, they are all inside
					// whatever their order; else lane by lane.
					ci, co := bits.OnesCount8(inEq), bits.OnesCount8(outEq)
					if ci <= bd.In.Allow && co <= bd.Out.Allow {
						bd.In.Allow -= ci
						bd.Out.Allow -= co
						in, out := a.Greater(inThr[m]), a.Greater(outThr[m])
						if inEq != 0 {
							in = in.Or(a.Equal(ib[m]))
						}
						if outEq != 0 {
							out = out.Or(a.Equal(ob[m]))
						}
						v = v.AsInt32x8().And(in.ToInt32x8().AndNot(out.ToInt32x8())).AsFloat32x8()
					} else {
						a.Store(&ab)
						laneKeep(&ab, &kb, bd)
						v = v.AsInt32x8().And(archsimd.LoadInt32x8(&kb)).AsFloat32x8()
					}
				} else if outNothing[m] {
					v = v.Masked(a.Greater(inThr[m]))
				} else {
					keep := a.Greater(inThr[m]).ToInt32x8().AndNot(a.Greater(outThr[m]).ToInt32x8())
					v = v.AsInt32x8().And(keep).AsFloat32x8()
				}
			}
			if drop {
				v = v.Masked(dl.keep(m))
			}
			if sv != nil {
				v = v.Mul(sv[m])
			}
			t[m] = v
		}
		sum := t[0].Mul(wv[0])
		for m := 1; m < T; m++ {
			sum = sum.Add(t[m].Mul(wv[m]))
		}
		var c archsimd.Float32x8
		if disjoint {
			s := sum.AsInt32x8()
			// γ's sign bit, cleared where |sum| = 0.
			g := s.And(sign).Masked(s.And(abs).NotEqual(zi))
			var num, den archsimd.Float32x8
			for m := range T {
				v := t[m].Mul(wv[m])
				agree := v.AsInt32x8().Xor(g).Greater(zi)
				num = num.Add(v.Masked(agree))
				den = den.Add(wv[m].Masked(agree))
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
		r := b.Add(c.Mul(lam))
		if consensus {
			var cnt archsimd.Int32x8
			for m := range T {
				rv := raw[m]
				ar := rv.AsInt32x8().And(abs).AsFloat32x8()
				ad := c.Sub(rv).AsInt32x8().And(abs).AsFloat32x8()
				cnt = cnt.Add(one.Masked(ar.GreaterEqual(tl[m].Mul(ad))))
			}
			r = r.Merge(b, cnt.Greater(kv))
		}
		acc = acc.Add(r.Mul(zf))
		r.StoreSlice(out[j:])
	}
	// The clear goes after the branch (see finite).
	if acc.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		if n < len(out) {
			mergeTasksTail(out, base, x, p, n)
		}
		return false
	}
	archsimd.ClearAVXUpperBits()
	if n < len(out) {
		return mergeTasksTail(out, base, x, p, n)
	}
	return true
}

// mergeTasksTail is mergeTasksGo over the entries from n on.
func mergeTasksTail(out, base []float32, x [][]float32, p *TaskMerge, n int) bool {
	q := *p // the bands' allowances stay shared: they are consumed in order
	q.Start += uint64(n)
	if q.base16 != nil {
		q.base16 = q.base16[n:]
		x16 := make([][]uint16, len(q.x16))
		for m, xm := range q.x16 {
			x16[m] = xm[n:]
		}
		q.x16 = x16
		return mergeTasksGoBF16(out[n:], &q)
	}
	return mergeTasksGo(out[n:], base[n:], tails(x, n), &q)
}

// dareLanes holds MergeTasks' DARE draws: per model the counter and the
// threshold (dareDraw's layout: in memory, set up only where dareVector
// holds).
type dareLanes struct {
	z, thr [8]archsimd.Uint64x8
	d      dareDraw
}

// init sets the counters of entry 0 at stream index start.
func (d *dareLanes) init(drop []Drop, start uint64) {
	d.d.init()
	for m, dr := range drop {
		d.z[m] = d.d.counter(dr.Key, start)
		d.thr[m] = archsimd.BroadcastUint64x8(dr.Thr)
	}
}

// keep is model m's keep mask of the next 8 entries; it moves m's counter
// on.
func (d *dareLanes) keep(m int) archsimd.Mask32x8 {
	k, z := d.d.keep(d.z[m], d.thr[m])
	d.z[m] = z
	return k
}

func countDiffWindows(x, b []float32, lo, hi []uint32, above []int64, cands [][]uint32) bool {
	// Signed lane compares order magnitudes correctly below 2³¹.
	ok := accelerated
	for i := range lo {
		ok = ok && lo[i] <= 0x7fffffff && hi[i] <= 0x7fffffff
	}
	if !ok {
		return countDiffWindowsGo(x, b, lo, hi, above, cands)
	}
	W := len(lo)
	n := len(x) &^ (lanes - 1)
	var lv, hv [8]archsimd.Int32x8
	for i := range W {
		lv[i] = archsimd.BroadcastInt32x8(int32(lo[i]))
		hv[i] = archsimd.BroadcastInt32x8(int32(hi[i]))
	}
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	var cnt [8]int64
	var bits [lanes]int32
	var zf, acc archsimd.Float32x8
	for j := 0; j < n; j += lanes {
		xv := archsimd.LoadFloat32x8Slice(x[j:])
		acc = acc.Add(xv.Mul(zf))
		a := xv.Sub(archsimd.LoadFloat32x8Slice(b[j:])).AsInt32x8().And(abs)
		for i := range W {
			cnt[i] += popcount8(a.Greater(hv[i]).ToBits())
			if in := a.GreaterEqual(lv[i]).And(a.LessEqual(hv[i])).ToBits(); in != 0 {
				a.Store(&bits)
				for l := range lanes {
					if in&(1<<l) != 0 {
						cands[i] = append(cands[i], uint32(bits[l]))
					}
				}
			}
		}
	}
	// The clear goes after the branch (see finite).
	fin := true
	if acc.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		fin = false
	} else {
		archsimd.ClearAVXUpperBits()
	}
	for i := range W {
		above[i] += cnt[i]
	}
	tail := countDiffWindowsGo(x[n:], b[n:], lo, hi, above, cands)
	return fin && tail
}

func meanLerp(out, base []float32, x [][]float32, nT, t, omt float32) bool {
	if !accelerated {
		return meanLerpGo(out, base, x, t, omt)
	}
	n := len(out) &^ (lanes - 1)
	nv := archsimd.BroadcastFloat32x8(nT)
	tv := archsimd.BroadcastFloat32x8(t)
	ov := archsimd.BroadcastFloat32x8(omt)
	var zf, acc archsimd.Float32x8
	for j := 0; j < n; j += lanes {
		var s archsimd.Float32x8 // +0, as meanLerpGo's cleared sum
		for _, xm := range x {
			s = s.Add(archsimd.LoadFloat32x8Slice(xm[j:]))
		}
		b := archsimd.LoadFloat32x8Slice(base[j:])
		r := s.Div(nv).Mul(tv).Add(b.Mul(ov))
		acc = acc.Add(r.Mul(zf))
		r.StoreSlice(out[j:])
	}
	if acc.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		if n < len(out) {
			meanLerpGo(out[n:], base[n:], tails(x, n), t, omt)
		}
		return false
	}
	archsimd.ClearAVXUpperBits()
	if n < len(out) {
		return meanLerpGo(out[n:], base[n:], tails(x, n), t, omt)
	}
	return true
}

func taskGrams(g []float64, base []float32, x [][]float32) bool {
	if !accelerated {
		return false
	}
	if applied, ok := taskGramsFew(g, base, x); applied {
		return ok
	}
	T := len(x)
	P := T * (T + 1) / 2
	var acc [36]archsimd.Float64x4
	var lo, hi [8]archsimd.Float64x4
	var zf, fin archsimd.Float32x8
	for j := 0; j < len(base); j += lanes {
		b := archsimd.LoadFloat32x8Slice(base[j:])
		fin = fin.Add(b.Mul(zf))
		for m := range T {
			xv := archsimd.LoadFloat32x8Slice(x[m][j:])
			fin = fin.Add(xv.Mul(zf))
			t := xv.Sub(b)
			lo[m] = t.GetLo().ConvertToFloat64()
			hi[m] = t.GetHi().ConvertToFloat64()
		}
		p := 0
		for a := range T {
			for c := a; c < T; c++ {
				acc[p] = acc[p].Add(lo[a].Mul(lo[c])).Add(hi[a].Mul(hi[c]))
				p++
			}
		}
	}
	var s [36][4]float64
	for p := range P {
		acc[p].Store(&s[p])
	}
	// The clear goes after the branch (see finite).
	if fin.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		return false
	}
	archsimd.ClearAVXUpperBits()
	for p := range P {
		g[p] = (s[p][0] + s[p][2]) + (s[p][1] + s[p][3])
	}
	return true
}
