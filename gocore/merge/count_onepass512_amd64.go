//go:build goexperiment.simd && amd64

package merge

import (
	"math"
	"math/bits"
	"simd/archsimd"
	"slices"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// countGather512 turns countGather's 16-lane loops on (AVX-512; a variable
// for the tests).
var countGather512 = vec.Accelerated() && archsimd.X86.AVX512()

// popcount8 is the number of set bits of every byte: bits.OnesCount16
// compiles to a test of the CPU's POPCNT and a call on the other branch,
// around which the register allocator spills the loop's vectors.
var popcount8 = func() (t [256]uint8) {
	for i := range t {
		t[i] = uint8(bits.OnesCount8(uint8(i)))
	}
	return t
}()

// ones16 is the number of set bits of x.
func ones16(x uint16) int { return int(popcount8[x&0xff]) + int(popcount8[x>>8]) }

// countGatherIota is the lane numbers 0…15.
var countGatherIota = [16]int32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

// cgBlock is the entries countGather takes per block: the block's
// weighted task vectors (and raw ones) stay in the L1 cache between its
// two loops.
const cgBlock = 256

// cgModel is one model's state in countGather's first loop.
type cgModel struct {
	inThr, outThr archsimd.Int32x16
	w             archsimd.Float32x16
	hi            [2]archsimd.Int32x16  // the flagged windows' hi
	lo, span      [2]archsimd.Uint32x16 // and their lo and hi − lo
	cnt           [2]archsimd.Int32x16  // lanes above hi, per lane
	mx            archsimd.Int32x16     // the largest magnitude bits
	win           [2]int                // the flagged windows' indices
	nw            int
	hasOut, raw   bool
}

// countGather is countFlagMerge with the flagged entries gathered in the
// same pass, 16 lanes at a time (AVX-512), in blocks of cgBlock entries:
// per model, one loop over the block forms |θ_m − θ₀| once, counts the
// lanes above each flagged window's hi, marks the lanes inside it (one
// unsigned range compare) and stores the model's masked, weighted task
// vector; then one loop combines them (MergeTasks' vector code, operation
// for operation, so the bits are MergeTasks'), writes every lane's result
// (the flagged lanes' are provisional: the patch decides them) and
// compresses the flagged entries' indices, base and model values into s.
// Two short loops with few live vectors each run faster than one that
// spills (session 14 measured a fused loop again: 1.02–1.10×). No branch
// depends on the data. The candidates of the flagged windows are then taken from the
// gathered entries (every entry inside a flagged window is flagged, in
// index order). Unflagged windows are not counted: no target that needs a
// cut uses them.
//
// It takes countFlagMerge's cases with at most two flagged windows per
// model; otherwise, or without AVX-512, it reports ok = false and does
// nothing. fin reports whether b and every x[m] are finite; rfin whether
// every result written but the flagged entries' is. The
// finiteness of the inputs is read from the magnitudes: a non-finite input
// makes some |θ_m − θ₀| a NaN or ±Inf, and only then (or when a
// difference overflows) are the inputs checked one by one.
func countGather(out, b []float32, x [][]float32, fw *flagWindows, p *vec.TaskMerge, s *cgScratch) (fin, rfin, ok bool) {
	T := len(x)
	if !countGather512 || T > 8 || p.Scale != nil || p.Check ||
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
			panic("merge.countGather: input shorter than the base")
		}
	}
	var ms [8]cgModel
	for i := range fw.n {
		if !fw.flag[i] {
			continue
		}
		m := fw.wm[i]
		md := &ms[m]
		if md.nw == 2 || fw.lo[i] > fw.hi[i] {
			return false, false, false
		}
		k := md.nw
		md.win[k] = i
		md.hi[k] = archsimd.BroadcastInt32x16(int32(fw.hi[i]))
		md.lo[k] = archsimd.BroadcastUint32x16(fw.lo[i])
		md.span[k] = archsimd.BroadcastUint32x16(fw.hi[i] - fw.lo[i])
		md.nw++
	}
	// The band thresholds, as MergeTasks: inside ⇔ a > thr, thr = bits
	// (no tie inside) or bits − 1 (every tie inside).
	for m, bd := range p.Bands {
		it, ot := int32(bd.In.Bits), int32(bd.Out.Bits)
		if bd.In.Allow < 0 {
			it--
		}
		if bd.Out.Allow < 0 {
			ot--
		}
		md := &ms[m]
		md.inThr, md.outThr = archsimd.BroadcastInt32x16(it), archsimd.BroadcastInt32x16(ot)
		md.hasOut = ot < 0x7fffffff
		md.w = archsimd.BroadcastFloat32x16(p.W[m])
		md.raw = p.TallLam != nil
	}
	s.reset(len(b), fw.n, T)
	cs := cgCombine{p: p, jv: archsimd.LoadInt32x16(&countGatherIota)}
	for m := range T {
		cs.w[m] = archsimd.BroadcastFloat32x16(p.W[m])
	}
	for m, l := range p.TallLam {
		cs.tl[m] = archsimd.BroadcastFloat32x16(l)
	}
	n := len(b) &^ 15
	for m := range T {
		cs.x[m] = unsafe.Pointer(unsafe.SliceData(x[m]))
	}
	for j := 0; j < n; j += cgBlock {
		e := min(j+cgBlock, n)
		s.fl = [cgBlock / 16]uint16{}
		for m := range T {
			cgModelBlock(x[m][j:e], b[j:e], &s.tw[m], &s.raw[m], &s.fl, &ms[m])
		}
		cs.block(out[j:e], b[j:e], T, j, s)
	}
	// The clear goes after the branches (see package vec's finite).
	fin, rfin = true, true
	big := archsimd.BroadcastInt32x16(0x7f7fffff)
	var mx archsimd.Int32x16
	for m := range T {
		mx = mx.Max(ms[m].mx)
	}
	if mx.Greater(big).ToBits() != 0 {
		fin = false
	}
	if cs.racc.IsNaN().ToBits() != 0 {
		rfin = false
	}
	var cl [8][2][16]int32
	for m := range T {
		for k := range ms[m].nw {
			ms[m].cnt[k].Store(&cl[m][k])
		}
	}
	archsimd.ClearAVXUpperBits()
	for m := range T {
		for k := range ms[m].nw {
			i := ms[m].win[k]
			for _, c := range cl[m][k] {
				s.above[i] += int64(c)
			}
		}
	}
	if !fin {
		// A non-finite input, or a difference that overflowed.
		fin = vec.Finite(b[:n])
		for _, xm := range x {
			fin = fin && vec.Finite(xm[:n])
		}
	}
	if n < len(b) {
		tf, trf := countGatherGo(out, b, x, fw, p, s, n)
		fin, rfin = fin && tf, rfin && trf
	}
	s.candidates(fw)
	return fin, rfin, true
}

// cgModelBlock is countGather's first loop over one model's block (a
// multiple of 16 entries, at most cgBlock): the magnitudes' maximum, the
// flagged windows' counts above hi and marks in fl (one bit per entry),
// the weighted masked task vector in tw and, for the TALL masks, the raw
// one in raw. The loop addresses its vectors by pointer (the lengths are
// checked once): the slice expressions' bounds checks and clamped
// pointers cost more instructions than the vector work.
func cgModelBlock(x, b []float32, tw, raw *[cgBlock]float32, fl *[cgBlock / 16]uint16, md *cgModel) {
	n := len(x) &^ 15
	if n > cgBlock || len(b) < n {
		panic("merge.cgModelBlock: block too long or base too short")
	}
	xp, bp := unsafe.Pointer(unsafe.SliceData(x)), unsafe.Pointer(unsafe.SliceData(b))
	twp, rawp := unsafe.Pointer(tw), unsafe.Pointer(raw)
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	var zf archsimd.Float32x16
	inThr, outThr, w, mx := md.inThr, md.outThr, md.w, md.mx
	hasOut, keepRaw, nw := md.hasOut, md.raw, md.nw
	hi0, lo0, span0, cnt0 := md.hi[0], md.lo[0], md.span[0], md.cnt[0]
	if nw <= 1 && !hasOut {
		// One cut and at most one window (ties, magnitude_prune,
		// consensus_ties): fewer live vectors.
		for j := 0; j < n; j += 16 {
			o := uintptr(j) * 4
			v := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(xp, o))).Sub(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(bp, o))))
			a := v.AsInt32x16().And(abs)
			mx = mx.Max(a)
			t := v.Merge(zf, a.Greater(inThr))
			if nw > 0 {
				cnt0 = cnt0.Sub(a.Greater(hi0).ToInt32x16())
				fl[j>>4] |= a.AsUint32x16().Sub(lo0).LessEqual(span0).ToBits()
			}
			if keepRaw {
				v.Store((*[16]float32)(unsafe.Add(rawp, o)))
			}
			t.Mul(w).Store((*[16]float32)(unsafe.Add(twp, o)))
		}
		md.mx, md.cnt[0] = mx, cnt0
		return
	}
	hi1, lo1, span1, cnt1 := md.hi[1], md.lo[1], md.span[1], md.cnt[1]
	for j := 0; j < n; j += 16 {
		o := uintptr(j) * 4
		v := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(xp, o))).Sub(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(bp, o))))
		a := v.AsInt32x16().And(abs)
		mx = mx.Max(a)
		t := v.Merge(zf, a.Greater(inThr))
		if hasOut {
			t = zf.Merge(t, a.Greater(outThr))
		}
		if nw > 0 {
			cnt0 = cnt0.Sub(a.Greater(hi0).ToInt32x16())
			f := a.AsUint32x16().Sub(lo0).LessEqual(span0).ToBits()
			if nw > 1 {
				cnt1 = cnt1.Sub(a.Greater(hi1).ToInt32x16())
				f |= a.AsUint32x16().Sub(lo1).LessEqual(span1).ToBits()
			}
			fl[j>>4] |= f
		}
		if keepRaw {
			v.Store((*[16]float32)(unsafe.Add(rawp, o)))
		}
		t.Mul(w).Store((*[16]float32)(unsafe.Add(twp, o)))
	}
	md.mx, md.cnt[0], md.cnt[1] = mx, cnt0, cnt1
}

// cgCombine is the state of countGather's second loop.
type cgCombine struct {
	p     *vec.TaskMerge
	w, tl [8]archsimd.Float32x16
	x     [8]unsafe.Pointer // the models' first entries
	jv    archsimd.Int32x16 // the next group's indices
	racc  archsimd.Float32x16
}

// block combines the block's weighted task vectors (s.tw, s.raw) into
// out, leaves the flagged lanes (s.fl) out of the finiteness test
// (their results are provisional) and gathers their indices
// (the block starts at entry j0), base and model values into s, whose
// buffers hold a chunk plus 16 (by pointer, as cgModelBlock).
func (cs *cgCombine) block(out, b []float32, T, j0 int, s *cgScratch) {
	p := cs.p
	n := len(out) &^ 15
	if n > cgBlock || len(b) < n || len(s.idx) < j0+n+16 {
		panic("merge.cgCombine.block: block too long or buffers too short")
	}
	lam := archsimd.BroadcastFloat32x16(p.Lam)
	div := archsimd.BroadcastFloat32x16(p.Div)
	kv := archsimd.BroadcastInt32x16(int32(min(max(p.K-1, -1), 8)))
	one := archsimd.BroadcastInt32x16(1)
	sign := archsimd.BroadcastInt32x16(-0x80000000)
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	sixteen := archsimd.BroadcastInt32x16(16)
	consensus, disjoint, norm, divOn := p.TallLam != nil, p.Disjoint, p.Norm, p.DivOn
	var zi archsimd.Int32x16
	var zf archsimd.Float32x16
	jv, racc := cs.jv, cs.racc
	outp, bp := unsafe.Pointer(unsafe.SliceData(out)), unsafe.Pointer(unsafe.SliceData(b))
	twp, rawp := unsafe.Pointer(&s.tw), unsafe.Pointer(&s.raw)
	idxp, gbp := unsafe.Pointer(unsafe.SliceData(s.idx)), unsafe.Pointer(unsafe.SliceData(s.base))
	var gxp [8]unsafe.Pointer
	for m := range T {
		if len(s.x[m]) < j0+n+16 {
			panic("merge.cgCombine.block: gather buffer too short")
		}
		gxp[m] = unsafe.Pointer(unsafe.SliceData(s.x[m]))
	}
	const row = cgBlock * 4 // bytes between two models' rows of tw, raw
	nf := uintptr(s.nf) * 4 // bytes gathered
	for j := 0; j < n; j += 16 {
		o := uintptr(j) * 4
		bv := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(bp, o)))
		sum := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(twp, o)))
		for m := 1; m < T; m++ {
			sum = sum.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(twp, uintptr(m)*row+o))))
		}
		var c archsimd.Float32x16
		if disjoint {
			si := sum.AsInt32x16()
			g := si.And(sign).Merge(zi, si.And(abs).NotEqual(zi))
			var num, den archsimd.Float32x16
			for m := range T {
				v := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(twp, uintptr(m)*row+o)))
				agree := v.AsInt32x16().Xor(g).Greater(zi)
				num = num.Add(v.Merge(zf, agree))
				den = den.Add(cs.w[m].Merge(zf, agree))
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
			var votes archsimd.Int32x16
			for m := range T {
				rv := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(rawp, uintptr(m)*row+o)))
				ar := rv.AsInt32x16().And(abs).AsFloat32x16()
				ad := c.Sub(rv).AsInt32x16().And(abs).AsFloat32x16()
				votes = votes.Add(one.Merge(zi, ar.GreaterEqual(cs.tl[m].Mul(ad))))
			}
			r = r.Merge(bv, votes.Greater(kv))
		}
		fb := s.fl[j>>4]
		f := archsimd.Mask32x16FromBits(fb)
		// The flagged lanes keep their provisional results, left out of
		// the finiteness test (the patch decides them).
		racc = racc.Add(zf.Merge(r, f).Mul(zf))
		r.Store((*[16]float32)(unsafe.Add(outp, o)))
		// The flagged entries' indices and inputs.
		jv.Compress(f).Store((*[16]int32)(unsafe.Add(idxp, nf)))
		bv.Compress(f).Store((*[16]float32)(unsafe.Add(gbp, nf)))
		xo := uintptr(j0)*4 + o
		for m := range T {
			xv := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(cs.x[m], xo)))
			xv.Compress(f).Store((*[16]float32)(unsafe.Add(gxp[m], nf)))
		}
		nf += uintptr(ones16(fb)) * 4
		jv = jv.Add(sixteen)
	}
	cs.jv, cs.racc, s.nf = jv, racc, int(nf/4)
}

// candidates sets the flagged windows' candidates from the gathered
// entries: the magnitudes inside the window, in index order (16 lanes,
// compressed).
func (s *cgScratch) candidates(fw *flagWindows) {
	F := s.nf
	n := F &^ 15
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	for i := range fw.n {
		if !fw.flag[i] {
			continue
		}
		if cap(s.cand[i]) < F+16 {
			s.cand[i] = make([]uint32, F+16, max(F+16, 1024))
		}
		c := s.cand[i][:F+16]
		xm, b := s.x[fw.wm[i]][:F], s.base[:F]
		lo, span := fw.lo[i], fw.hi[i]-fw.lo[i]
		lv, sv := archsimd.BroadcastUint32x16(lo), archsimd.BroadcastUint32x16(span)
		k := 0
		for j := 0; j < n; j += 16 {
			a := archsimd.LoadFloat32x16Slice(xm[j:]).Sub(archsimd.LoadFloat32x16Slice(b[j:])).AsInt32x16().And(abs).AsUint32x16()
			in := a.Sub(lv).LessEqual(sv)
			a.Compress(in).StoreSlice(c[k:])
			k += ones16(in.ToBits())
		}
		archsimd.ClearAVXUpperBits()
		for j := n; j < F; j++ {
			a := math.Float32bits(xm[j]-b[j]) & 0x7fffffff
			c[k] = a
			if a-lo <= span {
				k++
			}
		}
		s.nc[i] = k
	}
}

// appendMags16 appends the magnitude bits |x[j] − b[j]| of 16 entries to
// s (one vector with AVX-512).
func appendMags16(s []uint32, x, b *[16]float32) []uint32 {
	if !countGather512 {
		return appendMags16Go(s, x, b)
	}
	n := len(s)
	s = slices.Grow(s, 16)[:n+16]
	abs := archsimd.BroadcastInt32x16(0x7fffffff)
	archsimd.LoadFloat32x16(x).Sub(archsimd.LoadFloat32x16(b)).AsInt32x16().And(abs).AsUint32x16().StoreSlice(s[n:])
	archsimd.ClearAVXUpperBits()
	return s
}
