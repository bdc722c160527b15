//go:build goexperiment.simd && amd64

package evolve

import (
	"simd/archsimd"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/search"
)

// accelerated reports whether the vector loops are in use (the build set
// GOEXPERIMENT=simd and the CPU has AVX2). A variable so that the tests can
// run the scalar path in the same binary.
var accelerated = archsimd.X86.AVX2()

// dense and mutate end their vector loops with archsimd.ClearAVXUpperBits
// (VZEROUPPER), once per call, before the scalar tail and the caller's code
// run: Go's scalar float code is legacy SSE, which Intel CPUs slow down many
// times over while the vector registers' upper halves are dirty (see the
// same note in package vec). Between the first vector instruction and that
// clear no legacy SSE may run either: dense copies the generator state
// before its vector code starts (the copy is SSE), and the dense* loops
// build their vectors themselves.

// lanes is the vector width in float32 elements.
const lanes = 8

// iota8 is the lane index vector 0, 1, …, 7.
var iota8 = [lanes]int32{0, 1, 2, 3, 4, 5, 6, 7}

// group is one vector's worth of elements.
type group = [lanes]float32

// groups views the first m·lanes elements of x as m groups (x must hold
// them; it panics otherwise), so that the loops index whole groups with one
// bounds check.
func groups(x []float32, m int) []group {
	x = x[:m*lanes]
	if m == 0 {
		return nil
	}
	return unsafe.Slice((*group)(unsafe.Pointer(unsafe.SliceData(x))), m)
}

// maskVecs are the loop-invariant vectors of a dense mask: the threshold
// (thr <= 2¹⁶ fits int32), the forced index (−1, which matches no lane, when
// it is outside the piece) and the lane step.
type maskVecs struct {
	thr, jr, step archsimd.Int32x8
}

// newMaskVecs returns the vectors of threshold thr and forced index jr for
// a piece of n elements.
func newMaskVecs(thr uint64, jr, n int) maskVecs {
	m := maskVecs{thr: archsimd.BroadcastInt32x8(int32(thr)), jr: archsimd.BroadcastInt32x8(-1),
		step: archsimd.BroadcastInt32x8(lanes)}
	if jr >= 0 && jr < n {
		m.jr = archsimd.BroadcastInt32x8(int32(jr))
	}
	return m
}

// take is the mask of one group: lane < thr, or element index == jr (u
// holds the group's 16-bit lanes, idx its element indices).
func (m *maskVecs) take(u archsimd.Uint16x8, idx archsimd.Int32x8) archsimd.Mask32x8 {
	return u.ExtendToUint32().AsInt32x8().Less(m.thr).Or(idx.Equal(m.jr))
}

// count is the number of lanes taken, from the per-lane sum of masks (each −1).
func count(c archsimd.Int32x8) int64 {
	var a [lanes]int32
	c.Store(&a)
	var s int64
	for i := range a { // by index: ranging over the array copies it with SSE
		s -= int64(a[i])
	}
	return s
}

// dense is the dense element step of one sub-block: the donor of every
// element and the crossover against x_i in one pass, eight elements per
// step, bit for bit as denseGo. len(dst) must not exceed subBlock (the lane
// counts are int32). Each step draws its two mask words from r's
// stream itself (r's state held in registers, see search.Step), so that the
// generator's arithmetic overlaps the loads instead of running in a phase
// of its own; the last partial group's words come from drawWords.
func (k *kernel) dense(dst, xi []float32, refs [3][]float32, r *search.RNG, thr uint64, jr int) int64 {
	n := len(dst)
	if !accelerated || n == 0 {
		return k.denseGo(dst, xi, refs, r, thr, jr)
	}
	st := r.State()
	full := n / lanes
	var taken int64
	switch k.c.Strategy {
	case StrategyEvolver:
		taken = denseEvolver(groups(dst, full), groups(xi, full), groups(refs[0], full), &st, k.f, thr, jr, n)
	case search.Rand1Bin, search.Best1Bin:
		taken = denseDiff(groups(dst, full), groups(xi, full), groups(refs[0], full), groups(refs[1], full), groups(refs[2], full), &st, k.f, thr, jr, n)
	case search.CurrentToBest1Bin:
		taken = denseCurrentToBest(groups(dst, full), groups(xi, full), groups(refs[0], full), groups(refs[1], full), groups(refs[2], full), &st, k.f, thr, jr, n)
	}
	archsimd.ClearAVXUpperBits()
	// A valid state never steps to all zero, the one state SetState rejects.
	_ = r.SetState(st)
	if a := full * lanes; a < n {
		// The last partial group: the same selection in plain Go.
		var words [2]uint64
		w := words[:(n-a+3)/4]
		drawWords(w, r)
		t, x := dst[a:], xi[a:n]
		k.mutateGo(t, x, [3][]float32{tail(refs[0], a), tail(refs[1], a), tail(refs[2], a)})
		for j := range t {
			if (w[j/4]>>(16*(j%4)))&0xffff < thr || a+j == jr {
				taken++
			} else {
				t[j] = x[j]
			}
		}
	}
	return taken
}

// maskWords draws the next two words of the stream whose state is s0…s3
// and returns them as the eight 16-bit lanes of one group (lane l of word
// q is entry 4q + l: amd64 is little-endian) with the next state.
func maskWords(s0, s1, s2, s3 uint64) (u archsimd.Uint16x8, n0, n1, n2, n3 uint64) {
	var w0, w1 uint64
	w0, s0, s1, s2, s3 = search.Step(s0, s1, s2, s3)
	w1, s0, s1, s2, s3 = search.Step(s0, s1, s2, s3)
	var v archsimd.Uint64x2
	return v.SetElem(0, w0).SetElem(1, w1).AsUint16x8(), s0, s1, s2, s3
}

// denseEvolver: donor x + F·(ref − x), F = fs; the mask of threshold thr
// and forced index jr over the piece of n elements (see newMaskVecs).
func denseEvolver(dst, xi, ref []group, st *search.RNGState, fs float32, thr uint64, jr, n int) int64 {
	xi, ref = xi[:len(dst)], ref[:len(dst)]
	s0, s1, s2, s3 := st[0], st[1], st[2], st[3]
	m := newMaskVecs(thr, jr, n)
	f := archsimd.BroadcastFloat32x8(fs)
	idx := archsimd.LoadInt32x8(&iota8)
	var cnt archsimd.Int32x8
	var u archsimd.Uint16x8
	for i := range dst {
		u, s0, s1, s2, s3 = maskWords(s0, s1, s2, s3)
		take := m.take(u, idx)
		x := archsimd.LoadFloat32x8(&xi[i])
		d := x.Add(archsimd.LoadFloat32x8(&ref[i]).Sub(x).Mul(f))
		d.Merge(x, take).Store(&dst[i])
		cnt = cnt.Add(take.ToInt32x8())
		idx = idx.Add(m.step)
	}
	*st = search.RNGState{s0, s1, s2, s3}
	return count(cnt)
}

// denseDiff: donor r0 + F·(r1 − r2).
func denseDiff(dst, xi, r0, r1, r2 []group, st *search.RNGState, fs float32, thr uint64, jr, n int) int64 {
	xi, r0, r1, r2 = xi[:len(dst)], r0[:len(dst)], r1[:len(dst)], r2[:len(dst)]
	s0, s1, s2, s3 := st[0], st[1], st[2], st[3]
	m := newMaskVecs(thr, jr, n)
	f := archsimd.BroadcastFloat32x8(fs)
	idx := archsimd.LoadInt32x8(&iota8)
	var cnt archsimd.Int32x8
	var u archsimd.Uint16x8
	for i := range dst {
		u, s0, s1, s2, s3 = maskWords(s0, s1, s2, s3)
		take := m.take(u, idx)
		d := archsimd.LoadFloat32x8(&r0[i]).Add(
			archsimd.LoadFloat32x8(&r1[i]).Sub(archsimd.LoadFloat32x8(&r2[i])).Mul(f))
		d.Merge(archsimd.LoadFloat32x8(&xi[i]), take).Store(&dst[i])
		cnt = cnt.Add(take.ToInt32x8())
		idx = idx.Add(m.step)
	}
	*st = search.RNGState{s0, s1, s2, s3}
	return count(cnt)
}

// denseCurrentToBest: donor x + F·(best − x) + F·(r1 − r2), best = r0.
func denseCurrentToBest(dst, xi, r0, r1, r2 []group, st *search.RNGState, fs float32, thr uint64, jr, n int) int64 {
	xi, r0, r1, r2 = xi[:len(dst)], r0[:len(dst)], r1[:len(dst)], r2[:len(dst)]
	s0, s1, s2, s3 := st[0], st[1], st[2], st[3]
	m := newMaskVecs(thr, jr, n)
	f := archsimd.BroadcastFloat32x8(fs)
	idx := archsimd.LoadInt32x8(&iota8)
	var cnt archsimd.Int32x8
	var u archsimd.Uint16x8
	for i := range dst {
		u, s0, s1, s2, s3 = maskWords(s0, s1, s2, s3)
		take := m.take(u, idx)
		x := archsimd.LoadFloat32x8(&xi[i])
		d := x.Add(archsimd.LoadFloat32x8(&r0[i]).Sub(x).Mul(f)).Add(
			archsimd.LoadFloat32x8(&r1[i]).Sub(archsimd.LoadFloat32x8(&r2[i])).Mul(f))
		d.Merge(x, take).Store(&dst[i])
		cnt = cnt.Add(take.ToInt32x8())
		idx = idx.Add(m.step)
	}
	*st = search.RNGState{s0, s1, s2, s3}
	return count(cnt)
}

// tail is x[a:], or nil for a nil x.
func tail(x []float32, a int) []float32 {
	if x == nil {
		return nil
	}
	return x[a:]
}

// mutate writes the donor of the trial's strategy into dst, eight elements
// per step, bit for bit as mutateGo (a multiply, then an add: no fused
// multiply-add).
func (k *kernel) mutate(dst, xi []float32, refs [3][]float32) {
	n := len(dst)
	if !accelerated || n < lanes {
		k.mutateGo(dst, xi, refs)
		return
	}
	fv := archsimd.BroadcastFloat32x8(k.f)
	full := n &^ (lanes - 1)
	switch k.c.Strategy {
	case StrategyEvolver:
		xi, ref := xi[:n], refs[0][:n]
		for j := 0; j < full; j += lanes {
			x := archsimd.LoadFloat32x8Slice(xi[j:])
			x.Add(archsimd.LoadFloat32x8Slice(ref[j:]).Sub(x).Mul(fv)).StoreSlice(dst[j:])
		}
	case search.Rand1Bin, search.Best1Bin:
		r0, r1, r2 := refs[0][:n], refs[1][:n], refs[2][:n]
		for j := 0; j < full; j += lanes {
			archsimd.LoadFloat32x8Slice(r0[j:]).Add(
				archsimd.LoadFloat32x8Slice(r1[j:]).Sub(archsimd.LoadFloat32x8Slice(r2[j:])).Mul(fv)).StoreSlice(dst[j:])
		}
	case search.CurrentToBest1Bin:
		xi, r0, r1, r2 := xi[:n], refs[0][:n], refs[1][:n], refs[2][:n]
		for j := 0; j < full; j += lanes {
			x := archsimd.LoadFloat32x8Slice(xi[j:])
			x.Add(archsimd.LoadFloat32x8Slice(r0[j:]).Sub(x).Mul(fv)).Add(
				archsimd.LoadFloat32x8Slice(r1[j:]).Sub(archsimd.LoadFloat32x8Slice(r2[j:])).Mul(fv)).StoreSlice(dst[j:])
		}
	}
	archsimd.ClearAVXUpperBits()
	if full < n {
		k.mutateGo(dst[full:], xi[full:], [3][]float32{tail(refs[0], full), tail(refs[1], full), tail(refs[2], full)})
	}
}
