//go:build goexperiment.simd && amd64

package vec

import "simd/archsimd"

var accelerated = archsimd.X86.AVX2()

// Every vector loop in this package is followed by
// archsimd.ClearAVXUpperBits (VZEROUPPER) before any scalar code runs (the
// function's own scalar tail included) and before it returns. On Intel
// CPUs, every switch between VEX (vector) and legacy SSE instructions while
// the upper halves of the vector registers hold data costs a state
// transition, about 400 ns on the Xeon measured. Go compiles scalar float
// code to legacy SSE and math.Exp interleaves legacy SSE with VEX FMA
// instructions, so after a loop that left the upper halves dirty every
// math.Exp pays several transitions: PCB ran 21–39× slower than in the
// plain build. Once per call, outside the loops: VZEROUPPER costs about a
// cycle. The clear is ordered only against memory operations and control
// flow, so a vector value used after the loop must feed a store or a branch
// before it (see finite).
//
// For the same reason the vector code itself must not contain legacy SSE
// instructions that write a register, which Go 1.26 emits for a few
// archsimd operations (golang/go#80835): ShiftAllRight by a count (a MOVQ
// in the loop; ShiftAllLeft by a constant compiles to an immediate),
// BroadcastFloat32x8(0) (an XORPS), and scalar float loads and compares
// (math.Float32bits of a slice element, scale != 1). Each costs two
// transitions per execution: the DARE methods ran 7–14× slower than in the
// plain build.

// ClearAVXUpper clears the upper halves of the vector registers
// (VZEROUPPER) when the CPU has AVX2; it does nothing in the plain build.
// Scalar loops that call math.Exp call it every few hundred elements: with
// GOEXPERIMENT=simd, Go 1.26's asynchronous preemption restores all 256 or
// 512 bits of every vector register, which leaves the upper halves dirty in
// code that never used a vector, and math.Exp (whose FMA path mixes VEX and
// legacy SSE instructions) then runs about 100× slower on Intel CPUs until
// something clears them. VZEROUPPER costs about a cycle.
func ClearAVXUpper() {
	if accelerated {
		archsimd.ClearAVXUpperBits()
	}
}

// lanes is the vector width in float32 elements.
const lanes = 8

// broadcast returns w's entries as vectors, in buf when it is large enough.
func broadcast(buf *[8]archsimd.Float32x8, w []float32) []archsimd.Float32x8 {
	var v []archsimd.Float32x8
	if len(w) <= len(buf) {
		v = buf[:len(w)]
	} else {
		v = make([]archsimd.Float32x8, len(w))
	}
	for m, x := range w {
		v[m] = archsimd.BroadcastFloat32x8(x)
	}
	return v
}

func deltaSum(out, base []float32, x [][]float32, w []float32, lam float32) {
	if !accelerated {
		deltaSumGo(out, base, x, w, lam)
		return
	}
	n := len(out) &^ (lanes - 1)
	var buf [8]archsimd.Float32x8
	wv := broadcast(&buf, w)
	lv := archsimd.BroadcastFloat32x8(lam)
	x0, w0 := x[0], wv[0]
	switch len(x) {
	case 1:
		for j := 0; j < n; j += lanes {
			b := archsimd.LoadFloat32x8Slice(base[j:])
			acc := archsimd.LoadFloat32x8Slice(x0[j:]).Sub(b).Mul(w0)
			b.Add(acc.Mul(lv)).StoreSlice(out[j:])
		}
	case 2:
		x1, w1 := x[1], wv[1]
		for j := 0; j < n; j += lanes {
			b := archsimd.LoadFloat32x8Slice(base[j:])
			acc := archsimd.LoadFloat32x8Slice(x0[j:]).Sub(b).Mul(w0)
			acc = acc.Add(archsimd.LoadFloat32x8Slice(x1[j:]).Sub(b).Mul(w1))
			b.Add(acc.Mul(lv)).StoreSlice(out[j:])
		}
	case 3:
		x1, w1, x2, w2 := x[1], wv[1], x[2], wv[2]
		for j := 0; j < n; j += lanes {
			b := archsimd.LoadFloat32x8Slice(base[j:])
			acc := archsimd.LoadFloat32x8Slice(x0[j:]).Sub(b).Mul(w0)
			acc = acc.Add(archsimd.LoadFloat32x8Slice(x1[j:]).Sub(b).Mul(w1))
			acc = acc.Add(archsimd.LoadFloat32x8Slice(x2[j:]).Sub(b).Mul(w2))
			b.Add(acc.Mul(lv)).StoreSlice(out[j:])
		}
	case 4:
		x1, w1, x2, w2, x3, w3 := x[1], wv[1], x[2], wv[2], x[3], wv[3]
		for j := 0; j < n; j += lanes {
			b := archsimd.LoadFloat32x8Slice(base[j:])
			acc := archsimd.LoadFloat32x8Slice(x0[j:]).Sub(b).Mul(w0)
			acc = acc.Add(archsimd.LoadFloat32x8Slice(x1[j:]).Sub(b).Mul(w1))
			acc = acc.Add(archsimd.LoadFloat32x8Slice(x2[j:]).Sub(b).Mul(w2))
			acc = acc.Add(archsimd.LoadFloat32x8Slice(x3[j:]).Sub(b).Mul(w3))
			b.Add(acc.Mul(lv)).StoreSlice(out[j:])
		}
	default:
		for j := 0; j < n; j += lanes {
			b := archsimd.LoadFloat32x8Slice(base[j:])
			acc := archsimd.LoadFloat32x8Slice(x0[j:]).Sub(b).Mul(w0)
			for m := 1; m < len(x); m++ {
				acc = acc.Add(archsimd.LoadFloat32x8Slice(x[m][j:]).Sub(b).Mul(wv[m]))
			}
			b.Add(acc.Mul(lv)).StoreSlice(out[j:])
		}
	}
	archsimd.ClearAVXUpperBits()
	if n < len(out) {
		deltaSumGo(out[n:], base[n:], tails(x, n), w, lam)
	}
}

// tails returns every x[m][n:].
func tails(x [][]float32, n int) [][]float32 {
	t := make([][]float32, len(x))
	for m, xm := range x {
		t[m] = xm[n:]
	}
	return t
}

func weightedSum(out []float32, x [][]float32, w []float32, scale float32) {
	if !accelerated {
		weightedSumGo(out, x, w, scale)
		return
	}
	if scale != 1 {
		weightedSumVec(out, x, w, scale, true)
	} else {
		weightedSumVec(out, x, w, 1, false)
	}
}

// weightedSumVec is weightedSum's vector path; scaled is scale != 1,
// compared by the caller: a float compare here would be a legacy SSE
// UCOMISS after the first vector instruction (the compiler sinks it).
func weightedSumVec(out []float32, x [][]float32, w []float32, scale float32, scaled bool) {
	n := len(out) &^ (lanes - 1)
	var buf [8]archsimd.Float32x8
	wv := broadcast(&buf, w)
	sv := archsimd.BroadcastFloat32x8(scale)
	x0, w0 := x[0], wv[0]
	for j := 0; j < n; j += lanes {
		acc := archsimd.LoadFloat32x8Slice(x0[j:]).Mul(w0)
		for m := 1; m < len(x); m++ {
			acc = acc.Add(archsimd.LoadFloat32x8Slice(x[m][j:]).Mul(wv[m]))
		}
		if scaled {
			acc = acc.Mul(sv)
		}
		acc.StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
	if n < len(out) {
		weightedSumGo(out[n:], tails(x, n), w, scale)
	}
}

func finite(x []float32) bool {
	if !accelerated {
		return finiteGo(x)
	}
	n := len(x) &^ (4*lanes - 1)
	// z is the zero value, not BroadcastFloat32x8(0): that compiles to a
	// legacy SSE XORPS.
	var a0, a1, a2, a3, z archsimd.Float32x8
	for j := 0; j < n; j += 4 * lanes {
		a0 = a0.Add(archsimd.LoadFloat32x8Slice(x[j:]).Mul(z))
		a1 = a1.Add(archsimd.LoadFloat32x8Slice(x[j+lanes:]).Mul(z))
		a2 = a2.Add(archsimd.LoadFloat32x8Slice(x[j+2*lanes:]).Mul(z))
		a3 = a3.Add(archsimd.LoadFloat32x8Slice(x[j+3*lanes:]).Mul(z))
	}
	// The clear goes after the branch: it is ordered only against memory
	// and control flow, so the sum would otherwise move past it.
	if a0.Add(a1).Add(a2).Add(a3).IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		return false
	}
	archsimd.ClearAVXUpperBits()
	return finiteGo(x[n:])
}

func sub(out, a, b []float32) {
	if !accelerated {
		subGo(out, a, b)
		return
	}
	n := len(out) &^ (lanes - 1)
	for j := 0; j < n; j += lanes {
		archsimd.LoadFloat32x8Slice(a[j:]).Sub(archsimd.LoadFloat32x8Slice(b[j:])).StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
	subGo(out[n:], a[n:], b[n:])
}

func maxAbsBits(x []float32) uint32 {
	if !accelerated {
		return maxAbsBitsGo(x)
	}
	n := len(x) &^ (4*lanes - 1)
	abs := archsimd.BroadcastUint32x8(0x7fffffff)
	var m0, m1, m2, m3 archsimd.Uint32x8
	for j := 0; j < n; j += 4 * lanes {
		m0 = m0.Max(archsimd.LoadFloat32x8Slice(x[j:]).AsUint32x8().And(abs))
		m1 = m1.Max(archsimd.LoadFloat32x8Slice(x[j+lanes:]).AsUint32x8().And(abs))
		m2 = m2.Max(archsimd.LoadFloat32x8Slice(x[j+2*lanes:]).AsUint32x8().And(abs))
		m3 = m3.Max(archsimd.LoadFloat32x8Slice(x[j+3*lanes:]).AsUint32x8().And(abs))
	}
	var m [lanes]uint32
	m0.Max(m1).Max(m2).Max(m3).Store(&m)
	archsimd.ClearAVXUpperBits()
	top := maxAbsBitsGo(x[n:])
	for _, v := range m {
		top = max(top, v)
	}
	return top
}

func widenBF16(dst []float32, src []uint16) {
	if !accelerated {
		widenBF16Go(dst, src)
		return
	}
	n := len(dst) &^ (lanes - 1)
	for j := 0; j < n; j += lanes {
		archsimd.LoadUint16x8Slice(src[j:]).ExtendToUint32().ShiftAllLeft(16).AsFloat32x8().StoreSlice(dst[j:])
	}
	archsimd.ClearAVXUpperBits()
	widenBF16Go(dst[n:], src[n:])
}

// narrowVector: the 32→16-bit truncation (VPMOVDW) needs AVX-512.
var narrowVector = accelerated && archsimd.X86.AVX512()

func narrowBF16(dst []uint16, src []float32) {
	if !narrowVector {
		narrowBF16Go(dst, src)
		return
	}
	n := len(dst) &^ (lanes - 1)
	// Shifts by a vector of counts: ShiftAllRight(16) loads its count with a
	// legacy SSE MOVQ in the loop (golang/go#80835).
	s16 := archsimd.BroadcastUint32x8(16)
	one := archsimd.BroadcastUint32x8(1)
	half := archsimd.BroadcastUint32x8(0x7fff)
	quiet := archsimd.BroadcastUint32x8(0x40)
	abs := archsimd.BroadcastUint32x8(0x7fffffff)
	inf := archsimd.BroadcastInt32x8(0x7f800000)
	for j := 0; j < n; j += lanes {
		b := archsimd.LoadFloat32x8Slice(src[j:]).AsUint32x8()
		hi := b.ShiftRight(s16)
		r := b.Add(half).Add(hi.And(one)).ShiftRight(s16)
		isNaN := b.And(abs).AsInt32x8().Greater(inf)
		hi.Or(quiet).Merge(r, isNaN).TruncateToUint16().StoreSlice(dst[j:])
	}
	archsimd.ClearAVXUpperBits()
	narrowBF16Go(dst[n:], src[n:])
}

func scale(out, x []float32, s float32) {
	if !accelerated {
		scaleGo(out, x, s)
		return
	}
	n := len(out) &^ (lanes - 1)
	sv := archsimd.BroadcastFloat32x8(s)
	for j := 0; j < n; j += lanes {
		archsimd.LoadFloat32x8Slice(x[j:]).Mul(sv).StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
	scaleGo(out[n:], x[n:], s)
}
