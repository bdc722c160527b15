//go:build goexperiment.simd && amd64

package vec

import "simd/archsimd"

var accelerated = archsimd.X86.AVX2()

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
		if scale != 1 {
			acc = acc.Mul(sv)
		}
		acc.StoreSlice(out[j:])
	}
	if n < len(out) {
		weightedSumGo(out[n:], tails(x, n), w, scale)
	}
}

func finite(x []float32) bool {
	if !accelerated {
		return finiteGo(x)
	}
	n := len(x) &^ (4*lanes - 1)
	var a0, a1, a2, a3 archsimd.Float32x8
	z := archsimd.BroadcastFloat32x8(0)
	for j := 0; j < n; j += 4 * lanes {
		a0 = a0.Add(archsimd.LoadFloat32x8Slice(x[j:]).Mul(z))
		a1 = a1.Add(archsimd.LoadFloat32x8Slice(x[j+lanes:]).Mul(z))
		a2 = a2.Add(archsimd.LoadFloat32x8Slice(x[j+2*lanes:]).Mul(z))
		a3 = a3.Add(archsimd.LoadFloat32x8Slice(x[j+3*lanes:]).Mul(z))
	}
	if a0.Add(a1).Add(a2).Add(a3).IsNaN().ToBits() != 0 {
		return false
	}
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
	subGo(out[n:], a[n:], b[n:])
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
	one := archsimd.BroadcastUint32x8(1)
	half := archsimd.BroadcastUint32x8(0x7fff)
	quiet := archsimd.BroadcastUint32x8(0x40)
	abs := archsimd.BroadcastUint32x8(0x7fffffff)
	inf := archsimd.BroadcastInt32x8(0x7f800000)
	for j := 0; j < n; j += lanes {
		b := archsimd.LoadFloat32x8Slice(src[j:]).AsUint32x8()
		hi := b.ShiftAllRight(16)
		r := b.Add(half).Add(hi.And(one)).ShiftAllRight(16)
		isNaN := b.And(abs).AsInt32x8().Greater(inf)
		hi.Or(quiet).Merge(r, isNaN).TruncateToUint16().StoreSlice(dst[j:])
	}
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
	scaleGo(out[n:], x[n:], s)
}
