package vec

import "math"

// Accelerated reports whether the vector loops are in use (the build set
// GOEXPERIMENT=simd and the CPU has AVX2).
func Accelerated() bool { return accelerated }

// DeltaSum sets out[j] = base[j] + lam·Σₘ w[m]·(x[m][j] − base[j]), the sum
// taken in model order starting from w[0]·(x[0][j] − base[j]). base and
// every x[m] must be at least len(out) long; len(w) must be len(x) ≥ 1.
func DeltaSum(out, base []float32, x [][]float32, w []float32, lam float32) {
	checkInputs(len(out), base, x, w)
	deltaSum(out, base, x, w, lam)
}

// WeightedSum sets out[j] = Σₘ w[m]·x[m][j] (in model order, starting from
// w[0]·x[0][j]), multiplied by scale when scale ≠ 1. Every x[m] must be at
// least len(out) long; len(w) must be len(x) ≥ 1.
func WeightedSum(out []float32, x [][]float32, w []float32, scale float32) {
	checkInputs(len(out), nil, x, w)
	weightedSum(out, x, w, scale)
}

// Finite reports whether every element of x is finite (no NaN, no ±Inf).
func Finite(x []float32) bool { return finite(x) }

// Sub sets out[j] = a[j] − b[j]; a and b must be at least len(out) long.
func Sub(out, a, b []float32) {
	if len(a) < len(out) || len(b) < len(out) {
		panic("vec.Sub: input shorter than output")
	}
	sub(out, a[:len(out)], b[:len(out)])
}

func checkInputs(n int, base []float32, x [][]float32, w []float32) {
	if len(x) == 0 || len(w) != len(x) {
		panic("vec: need one weight per input and at least one input")
	}
	if base != nil && len(base) < n {
		panic("vec: base shorter than output")
	}
	for _, xm := range x {
		if len(xm) < n {
			panic("vec: input shorter than output")
		}
	}
}

// The scalar loops: the reference the vector loops must match bit for bit,
// and their tails. Explicit float32 conversions keep the compiler from
// fusing a multiply and an add (Go spec, "Arithmetic operators").

func deltaSumGo(out, base []float32, x [][]float32, w []float32, lam float32) {
	base = base[:len(out)]
	x0 := x[0][:len(out)]
	w0 := w[0]
	for j, b := range base {
		out[j] = float32(w0 * (x0[j] - b))
	}
	for m := 1; m < len(x); m++ {
		xm, wm := x[m][:len(out)], w[m]
		for j, b := range base {
			out[j] += float32(wm * (xm[j] - b))
		}
	}
	for j, b := range base {
		out[j] = b + float32(lam*out[j])
	}
}

func weightedSumGo(out []float32, x [][]float32, w []float32, scale float32) {
	x0, w0 := x[0][:len(out)], w[0]
	for j, v := range x0 {
		out[j] = float32(w0 * v)
	}
	for m := 1; m < len(x); m++ {
		xm, wm := x[m][:len(out)], w[m]
		for j, v := range xm {
			out[j] += float32(wm * v)
		}
	}
	if scale != 1 {
		for j := range out {
			out[j] *= scale
		}
	}
}

// finiteGo adds x·0 over x: 0 for finite entries, NaN for NaN and ±Inf, and
// NaN stays NaN. Four accumulators keep the loop off the add's latency.
func finiteGo(x []float32) bool {
	var a0, a1, a2, a3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		q := x[i : i+4 : i+4]
		a0 += q[0] * 0
		a1 += q[1] * 0
		a2 += q[2] * 0
		a3 += q[3] * 0
	}
	for ; i < len(x); i++ {
		a0 += x[i] * 0
	}
	s := a0 + a1 + a2 + a3
	return s == s
}

func subGo(out, a, b []float32) {
	a, b = a[:len(out)], b[:len(out)]
	for j := range out {
		out[j] = a[j] - b[j]
	}
}

// WidenBF16 sets dst[j] to the float32 value of the bfloat16 bit pattern
// src[j] (exact); src must be at least len(dst) long.
func WidenBF16(dst []float32, src []uint16) {
	if len(src) < len(dst) {
		panic("vec.WidenBF16: source shorter than destination")
	}
	widenBF16(dst, src[:len(dst)])
}

// NarrowBF16 sets dst[j] to src[j] rounded to bfloat16, to nearest with
// ties to even; NaN stays a quiet NaN with its sign and top payload bits.
// src must be at least len(dst) long.
func NarrowBF16(dst []uint16, src []float32) {
	if len(src) < len(dst) {
		panic("vec.NarrowBF16: source shorter than destination")
	}
	narrowBF16(dst, src[:len(dst)])
}

func widenBF16Go(dst []float32, src []uint16) {
	src = src[:len(dst)]
	for j, b := range src {
		dst[j] = math.Float32frombits(uint32(b) << 16)
	}
}

// BF16Bits rounds x to bfloat16 (nearest, ties to even) and returns its bit
// pattern; NaN stays a quiet NaN with its sign and top payload bits.
func BF16Bits(x float32) uint16 {
	b := math.Float32bits(x)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

func narrowBF16Go(dst []uint16, src []float32) {
	src = src[:len(dst)]
	for j, x := range src {
		dst[j] = BF16Bits(x)
	}
}

// Scale sets out[j] = s·x[j]; x must be at least len(out) long.
func Scale(out, x []float32, s float32) {
	if len(x) < len(out) {
		panic("vec.Scale: input shorter than output")
	}
	scale(out, x[:len(out)], s)
}

func scaleGo(out, x []float32, s float32) {
	x = x[:len(out)]
	for j, v := range x {
		out[j] = s * v
	}
}

// BelowAbs reports whether |x[j]| < limit for every j; a NaN never is.
// limit must be positive (+Inf included, then BelowAbs is Finite). The
// check compares magnitude bit patterns (for non-negative floats their
// order is the integers'), without a branch per entry.
func BelowAbs(x []float32, limit float32) bool {
	if !(limit > 0) {
		panic("vec.BelowAbs: limit must be positive")
	}
	return maxAbsBits(x) < math.Float32bits(limit)
}

// maxAbsBitsGo is the largest |x[j]|'s bit pattern (a NaN's is above
// +Inf's), 0 for an empty x.
func maxAbsBitsGo(x []float32) uint32 {
	var m0, m1 uint32
	i := 0
	for ; i+2 <= len(x); i += 2 {
		m0 = max(m0, math.Float32bits(x[i])&0x7fffffff)
		m1 = max(m1, math.Float32bits(x[i+1])&0x7fffffff)
	}
	for ; i < len(x); i++ {
		m0 = max(m0, math.Float32bits(x[i])&0x7fffffff)
	}
	return max(m0, m1)
}
