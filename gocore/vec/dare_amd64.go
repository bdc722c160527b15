//go:build goexperiment.simd && amd64

package vec

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/rng"
)

// dareVector: the 64-bit lane multiply of rng.Mix (VPMULLQ) needs AVX-512.
var dareVector = accelerated && archsimd.X86.AVX512()

// dareDraw evaluates rng.Bits for 8 entries at once: lane l of the
// counter z holds key + (start+j+l+1)·golden, advanced by 8·golden per
// step (the same value mod 2⁶⁴), then the SplitMix64 finaliser. It lives
// in memory (more fields than the compiler keeps in registers), so that
// declaring one runs no AVX-512 instruction on a CPU without it; set it
// up (init) only where dareVector holds.
type dareDraw struct {
	step, c1, c2, s30, s27, s31, s40 archsimd.Uint64x8
}

func (d *dareDraw) init() {
	var golden uint64 = rng.Golden
	d.step = archsimd.BroadcastUint64x8(8 * golden)
	d.c1 = archsimd.BroadcastUint64x8(0xBF58476D1CE4E5B9)
	d.c2 = archsimd.BroadcastUint64x8(0x94D049BB133111EB)
	// Shifts by vectors of counts: ShiftAllRight(k) loads k with a legacy
	// SSE MOVQ in the loop (see the note on accelerated).
	d.s30 = archsimd.BroadcastUint64x8(30)
	d.s27 = archsimd.BroadcastUint64x8(27)
	d.s31 = archsimd.BroadcastUint64x8(31)
	d.s40 = archsimd.BroadcastUint64x8(40)
}

// counter is z for 8 entries from stream index start of key.
func (d *dareDraw) counter(key, start uint64) archsimd.Uint64x8 {
	var golden uint64 = rng.Golden
	var z0 [8]uint64
	for l := range z0 {
		z0[l] = key + (start+uint64(l)+1)*golden
	}
	return archsimd.LoadUint64x8(&z0)
}

// keep is the keep mask of the 8 entries of counter z (rng.Bits(…)>>40 <
// thr), and z moved on by 8 entries.
func (d *dareDraw) keep(z, thr archsimd.Uint64x8) (archsimd.Mask32x8, archsimd.Uint64x8) {
	h := z.Xor(z.ShiftRight(d.s30)).Mul(d.c1)
	h = h.Xor(h.ShiftRight(d.s27)).Mul(d.c2)
	h = h.Xor(h.ShiftRight(d.s31))
	return archsimd.Mask32x8FromBits(h.ShiftRight(d.s40).Less(thr).ToBits()), z.Add(d.step)
}

func dareDrop(tau []float32, key, start, thr uint64, scale float32) {
	if !dareVector {
		dareDropGo(tau, key, start, thr, scale)
		return
	}
	n := len(tau) &^ (lanes - 1)
	var d dareDraw
	d.init()
	z := d.counter(key, start)
	tv := archsimd.BroadcastUint64x8(thr)
	sv := archsimd.BroadcastFloat32x8(scale)
	for j := 0; j < n; j += lanes {
		var keep archsimd.Mask32x8
		keep, z = d.keep(z, tv)
		archsimd.LoadFloat32x8Slice(tau[j:]).Mul(sv).Masked(keep).StoreSlice(tau[j:])
	}
	archsimd.ClearAVXUpperBits() // see the note on accelerated
	dareDropGo(tau[n:], key, start+uint64(n), thr, scale)
}

func dareSums(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64) (before, after float64, ok bool) {
	n := max(len(x32), len(x16))
	n8 := n &^ (lanes - 1)
	if !dareVector || n8 == 0 {
		return dareSumsGo(x32, b32, x16, b16, key, start, thr)
	}
	wide := x16 != nil
	if wide {
		x16, b16 = x16[:n], b16[:n]
	} else {
		x32, b32 = x32[:n], b32[:n]
	}
	var d dareDraw
	d.init()
	z := d.counter(key, start)
	tv := archsimd.BroadcastUint64x8(thr)
	abs := archsimd.BroadcastUint32x8(0x7fffffff)
	var zf, fin archsimd.Float32x8
	var bl, bh, al, ah archsimd.Float64x4
	for j := 0; j < n8; j += lanes {
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
		var keep archsimd.Mask32x8
		keep, z = d.keep(z, tv)
		k := a.Masked(keep)
		al = al.Add(k.GetLo().ConvertToFloat64())
		ah = ah.Add(k.GetHi().ConvertToFloat64())
	}
	var bs, as [8]float64
	bl.Store((*[4]float64)(bs[:4]))
	bh.Store((*[4]float64)(bs[4:]))
	al.Store((*[4]float64)(as[:4]))
	ah.Store((*[4]float64)(as[4:]))
	// The clear goes after the branch (see finite).
	if fin.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		return 0, 0, false
	}
	archsimd.ClearAVXUpperBits()
	return dareSumsTail(x32, b32, x16, b16, key, start, thr, n8, &bs, &as)
}

// DropVectorized reports whether MergeTasks draws TaskMerge.Drop with a
// vector loop (AVX-512) rather than its scalar twin.
func DropVectorized() bool { return dareVector }
