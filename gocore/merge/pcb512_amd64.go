//go:build goexperiment.simd && amd64

package merge

import (
	"math"
	"math/bits"
	"simd/archsimd"
	"slices"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// PCB's per-entry loops with 16-lane vectors (AVX-512), bit for bit the
// plain-Go twins pcbBetaKeysGo and pcbMergeGo, as the 8-lane kernels of
// pcb_amd64.go are: the same float32 operations in the same order per
// lane, with vec.Exp32x16 and vec.Tanh32x16. On a CPU whose AVX-512 units
// are as wide as their registers (AMD Zen 5, Intel server cores) a 16-lane
// instruction does the work of two 8-lane ones: the β kernel's exp is
// compute-bound.

// pcbVector512 selects the 16-lane kernels (a variable for the tests,
// which turn it off to check the 8-lane ones too).
var pcbVector512 = vec.Accelerated() && archsimd.X86.AVX512()

// pcbLanes16 are one model's broadcast statistics on 16 lanes.
type pcbLanes16 struct {
	lo, hi, span, cut, bspan, w archsimd.Float32x16
	clip, score                 bool // hi > lo; bmax > cut
}

// pcbLanes16For returns room for the models' statistics (buf when it is
// large enough) with the flags set, before any vector instruction.
func pcbLanes16For(buf []pcbLanes16, cuts []pcbCut) []pcbLanes16 {
	if len(buf) < len(cuts) {
		buf = make([]pcbLanes16, len(cuts))
	}
	buf = buf[:len(cuts)]
	for m := range cuts {
		buf[m].clip = cuts[m].hi > cuts[m].lo
		buf[m].score = cuts[m].bmax > cuts[m].cut
	}
	return buf
}

// pcbBroadcast16 fills ls's vectors (see pcbBroadcast) and returns with
// the upper halves clean.
func pcbBroadcast16(ls []pcbLanes16, cuts []pcbCut, w []float32) {
	for m := range ls {
		l, c := &ls[m], &cuts[m]
		l.lo = archsimd.BroadcastFloat32x16(c.lo)
		l.hi = archsimd.BroadcastFloat32x16(c.hi)
		l.span = l.hi.Sub(l.lo)
		l.cut = archsimd.BroadcastFloat32x16(c.cut)
		l.bspan = archsimd.BroadcastFloat32x16(c.bmax).Sub(l.cut)
		if w != nil {
			l.w = archsimd.BroadcastFloat32x16(w[m])
		}
	}
	archsimd.ClearAVXUpperBits()
}

// pcbExpConsts16 are the constants of vec.Exp32x16 and vec.Tanh32x16.
var pcbExpConsts16 = sync.OnceValue(vec.NewExpConsts16)

// pcbExpInRange: with fewer models than this, exp's argument T·x²
// (0 ≤ x ≤ 1, or x = 0) lies in [0, T], inside the range where
// vec.Exp32x16InRange gives Exp32's bits without its clamps.
const pcbExpInRange = 86

// pcbInRange reports whether exp's argument T·x² stays in [0, T] ⊂
// (−86, 89): fewer than pcbExpInRange models and finite clip bounds (an
// infinite one, from a τ that overflowed, can make x NaN, which Exp32
// clamps).
func pcbInRange(cuts []pcbCut, tf float32) bool {
	if !(tf < pcbExpInRange) {
		return false
	}
	for m := range cuts {
		if !(cuts[m].hi <= math.MaxFloat32) {
			return false
		}
	}
	return true
}

// pcbKeyX16 is orderKey on 16 lanes: ^b for negative b, b | sign bit
// otherwise (a blend under the sign compare's mask).
func pcbKeyX16(b archsimd.Float32x16, zero archsimd.Int32x16, sign, ones archsimd.Uint32x16) archsimd.Uint32x16 {
	bi := b.AsInt32x16()
	bu := bi.AsUint32x16()
	return bu.Xor(ones).Merge(bu.Or(sign), bi.Less(zero))
}

// pcbFromKeyX16 is fromOrderKey on 16 lanes: k &^ sign bit when k's top
// bit is set, ^k otherwise.
func pcbFromKeyX16(k archsimd.Uint32x16, zero archsimd.Int32x16, sign, ones archsimd.Uint32x16) archsimd.Float32x16 {
	return k.Xor(sign).Merge(k.Xor(ones), k.AsInt32x16().Less(zero)).AsFloat32x16()
}

// pcbClipX16 is pcbClip on 16 lanes.
func pcbClipX16(x archsimd.Float32x16, l *pcbLanes16, abs archsimd.Uint32x16) archsimd.Float32x16 {
	v := x.AsUint32x16().And(abs).AsFloat32x16()
	v = v.Merge(l.lo, v.Greater(l.lo))
	return v.Merge(l.hi, v.Less(l.hi))
}

// pcbBetaKeysX16 is pcbBetaKeysGo on 16 lanes over j < n (a multiple of
// 16). With st, each model's keys are also counted against its bracket
// (pcbScanGo's counts, maximum and collected keys, in entry order) while
// they are in registers: pcbBetaScanGo on 16 lanes, the kept inside keys
// packed by VPCOMPRESSD into the list's spare room (grown beforehand).
func pcbBetaKeysX16(dst [][]uint32, base []float32, xs [][]float32, cuts []pcbCut, T, n int, st []pcbScanState) {
	var buf [8]pcbLanes16
	ls := pcbLanes16For(buf[:], cuts)
	tf := float32(T)
	inRange := pcbInRange(cuts, tf)
	scan := st != nil
	if scan {
		for m := range st {
			if l := st[m].cand; st[m].collect && cap(l)-len(l) < n+16 {
				// Doubling: a list grows by a few per cent of a chunk.
				st[m].cand = slices.Grow(l, max(n+16, len(l)))
			}
		}
	}
	var kbuf [8]pcbKeyLanes
	var mbuf [8][16]uint32
	kl, mx := kbuf[:0], mbuf[:0]
	if scan {
		kl = pcbKeyLanesFor(kbuf[:], len(st))
		mx = mbuf[:]
		if len(st) > len(mbuf) {
			mx = make([][16]uint32, len(st))
		}
	}
	pcbBroadcast16(ls, cuts, nil)
	if scan {
		for m := range kl {
			kl[m].lo = archsimd.BroadcastUint32x16(st[m].lo)
			kl[m].hi = archsimd.BroadcastUint32x16(st[m].hi)
			kl[m].mx = archsimd.BroadcastUint32x16(st[m].mx)
		}
	}
	k := pcbExpConsts16()
	tv := archsimd.BroadcastFloat32x16(tf)
	abs := archsimd.BroadcastUint32x16(1<<31 - 1)
	sign := archsimd.BroadcastUint32x16(1 << 31)
	ones := archsimd.BroadcastUint32x16(^uint32(0))
	var zi archsimd.Int32x16
	var zf archsimd.Float32x16
	sub := base != nil
	var b archsimd.Float32x16
	for j := 0; j < n; j += 16 {
		if sub {
			b = archsimd.LoadFloat32x16Slice(base[j:])
		}
		s := zf
		for _, xm := range xs {
			x := archsimd.LoadFloat32x16Slice(xm[j:])
			if sub {
				x = x.Sub(b)
			}
			s = s.Add(x)
		}
		for m, xm := range xs {
			l := &ls[m]
			x := archsimd.LoadFloat32x16Slice(xm[j:])
			if sub {
				x = x.Sub(b)
			}
			nx := zf
			if l.clip {
				nx = pcbClipX16(x, l, abs).Sub(l.lo).Div(l.span)
			}
			arg := tv.Mul(nx.Mul(nx))
			var intra archsimd.Float32x16
			if inRange {
				intra = vec.Exp32x16InRange(arg, k)
			} else {
				intra = vec.Exp32x16(arg, k)
			}
			y := x.Mul(s)
			inter, small := vec.Tanh32x16Small(y, k)
			if !small {
				inter = vec.Tanh32x16(y, k)
			}
			key := pcbKeyX16(intra.Mul(inter), zi, sign, ones)
			key.StoreSlice(dst[m][j:])
			if scan {
				q, sm := &kl[m], &st[m]
				q.mx = q.mx.Max(key)
				above := key.Greater(q.hi)
				in := key.GreaterEqual(q.lo).And(key.LessEqual(q.hi))
				sm.above += int64(ones16(above.ToBits()))
				c := ones16(in.ToBits())
				sm.inside += int64(c)
				if sm.collect {
					l := sm.cand
					key.Compress(in).StoreSlice(l[len(l) : len(l)+16])
					sm.cand = l[:len(l)+c]
				}
			}
		}
	}
	for m := range kl {
		kl[m].mx.Store(&mx[m])
	}
	archsimd.ClearAVXUpperBits()
	for m := range kl {
		for _, x := range mx[m] {
			st[m].mx = max(st[m].mx, x)
		}
	}
}

// pcbKeyLanes are one model's bracket (lo, hi) and running maximum on 16
// lanes.
type pcbKeyLanes struct {
	lo, hi, mx archsimd.Uint32x16
}

// pcbKeyLanesFor returns room for T models' bracket lanes (buf when it is
// large enough).
func pcbKeyLanesFor(buf []pcbKeyLanes, T int) []pcbKeyLanes {
	if len(buf) < T {
		return make([]pcbKeyLanes, T)
	}
	return buf[:T]
}

func pcbMergeX16(out, base []float32, xs [][]float32, sub bool, keys [][]uint32, off int, cuts []pcbCut, w []float32, lam float32, n int) {
	var buf [8]pcbLanes16
	ls := pcbLanes16For(buf[:], cuts)
	pcbBroadcast16(ls, cuts, w)
	lv := archsimd.BroadcastFloat32x16(lam)
	abs := archsimd.BroadcastUint32x16(1<<31 - 1)
	sign := archsimd.BroadcastUint32x16(1 << 31)
	ones := archsimd.BroadcastUint32x16(^uint32(0))
	floor := archsimd.BroadcastFloat32x16(1e-12)
	var zi archsimd.Int32x16
	var zf archsimd.Float32x16
	for j := 0; j < n; j += 16 {
		num, den := zf, zf
		b := archsimd.LoadFloat32x16Slice(base[j:])
		for m, xm := range xs {
			l := &ls[m]
			x := archsimd.LoadFloat32x16Slice(xm[j:])
			if sub {
				x = x.Sub(b)
			}
			sc := zf
			if l.score {
				beta := pcbFromKeyX16(archsimd.LoadUint32x16Slice(keys[m][off+j:]), zi, sign, ones)
				sc = beta.Merge(l.cut, beta.Greater(l.cut)).Sub(l.cut).Div(l.bspan)
			}
			c := pcbClipX16(x, l, abs)
			// tc = c for x > 0, −c for x < 0, 0 otherwise.
			tc := c.Merge(zf, x.Greater(zf))
			tc = c.AsUint32x16().Xor(sign).AsFloat32x16().Merge(tc, x.Less(zf))
			num = num.Add(l.w.Mul(sc.Mul(tc)))
			den = den.Add(sc)
		}
		d := den.Merge(floor, den.Greater(floor))
		b.Add(lv.Mul(num.Div(d))).StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
}

// pcbTailsScanSubX16 is pcbTailsScanSub on 16 lanes.
func pcbTailsScanSubX16(x, base []float32, t *pcbTails) bool {
	n := len(x) &^ 15
	var kb [16]uint32
	tLo, tHi := t.thresholds()
	abs := archsimd.BroadcastUint32x16(1<<31 - 1)
	lo, hi := archsimd.BroadcastInt32x16(tLo), archsimd.BroadcastInt32x16(min(tHi, pcbFiniteKey-1))
	for j := 0; j < n; j += 16 {
		d := archsimd.LoadFloat32x16Slice(x[j:]).Sub(archsimd.LoadFloat32x16Slice(base[j:]))
		k := d.AsUint32x16().And(abs).AsInt32x16()
		m := k.Less(lo).Or(k.Greater(hi)).ToBits()
		if m == 0 {
			continue
		}
		k.AsUint32x16().Store(&kb)
		for ; m != 0; m &= m - 1 {
			l := bits.TrailingZeros16(m)
			if !pcbTailsOffer(t, kb[l], x, j+l) {
				archsimd.ClearAVXUpperBits()
				return false
			}
		}
		tLo, tHi = t.thresholds()
		lo, hi = archsimd.BroadcastInt32x16(tLo), archsimd.BroadcastInt32x16(min(tHi, pcbFiniteKey-1))
	}
	archsimd.ClearAVXUpperBits()
	return pcbTailsScanSubGo(x, base, t, n, len(x))
}

// pcbMergeScoredX16 is pcbMergeScoredGo on 16 lanes over j < n (a
// multiple of 16): pcbBetaKeysX16's β and pcbMergeX16's merge in one
// loop, no keys.
func pcbMergeScoredX16(out, base []float32, xs [][]float32, sub bool, cuts []pcbCut, w []float32, lam float32, n int) {
	var buf [8]pcbLanes16
	ls := pcbLanes16For(buf[:], cuts)
	tf := float32(len(xs))
	inRange := pcbInRange(cuts, tf)
	pcbBroadcast16(ls, cuts, w)
	k := pcbExpConsts16()
	tv := archsimd.BroadcastFloat32x16(tf)
	lv := archsimd.BroadcastFloat32x16(lam)
	abs := archsimd.BroadcastUint32x16(1<<31 - 1)
	sign := archsimd.BroadcastUint32x16(1 << 31)
	floor := archsimd.BroadcastFloat32x16(1e-12)
	var zf archsimd.Float32x16
	for j := 0; j < n; j += 16 {
		b := archsimd.LoadFloat32x16Slice(base[j:])
		s := zf
		for _, xm := range xs {
			x := archsimd.LoadFloat32x16Slice(xm[j:])
			if sub {
				x = x.Sub(b)
			}
			s = s.Add(x)
		}
		num, den := zf, zf
		for m, xm := range xs {
			l := &ls[m]
			x := archsimd.LoadFloat32x16Slice(xm[j:])
			if sub {
				x = x.Sub(b)
			}
			c := pcbClipX16(x, l, abs)
			sc := zf
			if l.score {
				nx := zf
				if l.clip {
					nx = c.Sub(l.lo).Div(l.span)
				}
				arg := tv.Mul(nx.Mul(nx))
				var intra archsimd.Float32x16
				if inRange {
					intra = vec.Exp32x16InRange(arg, k)
				} else {
					intra = vec.Exp32x16(arg, k)
				}
				y := x.Mul(s)
				inter, small := vec.Tanh32x16Small(y, k)
				if !small {
					inter = vec.Tanh32x16(y, k)
				}
				beta := intra.Mul(inter)
				sc = beta.Merge(l.cut, beta.Greater(l.cut)).Sub(l.cut).Div(l.bspan)
			}
			// tc = c for x > 0, −c for x < 0, 0 otherwise.
			tc := c.Merge(zf, x.Greater(zf))
			tc = c.AsUint32x16().Xor(sign).AsFloat32x16().Merge(tc, x.Less(zf))
			num = num.Add(l.w.Mul(sc.Mul(tc)))
			den = den.Add(sc)
		}
		d := den.Merge(floor, den.Greater(floor))
		b.Add(lv.Mul(num.Div(d))).StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
}
