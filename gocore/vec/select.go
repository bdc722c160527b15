package vec

import "math"

// The loops of magnitude selection (top-k) and of TIES' disjoint mean.
// Magnitudes are compared as the bit patterns of |x| (sign cleared), which
// order like the values for all non-NaN floats.

// AbsDiff sets out[j] = |a[j] − b[j]|; a and b must be at least len(out)
// long.
func AbsDiff(out, a, b []float32) {
	if len(a) < len(out) || len(b) < len(out) {
		panic("vec.AbsDiff: input shorter than output")
	}
	absDiff(out, a[:len(out)], b[:len(out)])
}

// CountWindow counts the entries of x (magnitudes: sign bits clear) whose
// bits exceed hi, and appends the bits of those within [lo, hi] to cands, in
// order. It returns the count and the extended cands.
func CountWindow(x []float32, lo, hi uint32, cands []uint32) (int64, []uint32) {
	return countWindow(x, lo, hi, cands)
}

// KeepTop zeroes the entries of x whose magnitude bits are below b, keeps
// those above, and of those equal to b keeps the first allow (all when
// allow < 0). It returns the allowance left (allow < 0 stays as it is).
func KeepTop(x []float32, b uint32, allow int) int {
	return keepTop(x, b, allow)
}

// DisjointMean sets out[j] to TIES' disjoint merge of the x[m][j] (Yadav et
// al. 2023): the elected sign γ is that of Σₘ w[m]·x[m][j] (+ when the sum is
// ±0); the result sums the weighted entries w[m]·x[m][j] that are non-zero
// with sign γ and, when norm is set, divides by the sum of their weights
// (unless that is 0); +0 where none agrees. len(w) must be len(x) ≥ 1.
func DisjointMean(out []float32, x [][]float32, w []float32, norm bool) {
	checkInputs(len(out), nil, x, w)
	disjointMean(out, x, w, norm)
}

func absDiffGo(out, a, b []float32) {
	a, b = a[:len(out)], b[:len(out)]
	for j := range out {
		out[j] = math.Float32frombits(math.Float32bits(a[j]-b[j]) & 0x7fffffff)
	}
}

func countWindowGo(x []float32, lo, hi uint32, cands []uint32) (int64, []uint32) {
	var above int64
	for _, v := range x {
		a := math.Float32bits(v)
		above += int64((uint64(hi) - uint64(a)) >> 63)
		if a >= lo && a <= hi {
			cands = append(cands, a)
		}
	}
	return above, cands
}

func keepTopGo(x []float32, b uint32, allow int) int {
	for j, v := range x {
		a := math.Float32bits(v) & 0x7fffffff
		switch {
		case a > b:
		case a == b && allow != 0:
			if allow > 0 { // < 0: all ties kept
				allow--
			}
		default:
			x[j] = 0
		}
	}
	return allow
}

// disjointMeanGo is the branch-free scalar disjoint mean: the agreement
// test runs on sign bits (random signs defeat branch prediction).
func disjointMeanGo(out []float32, x [][]float32, w []float32, norm bool) {
	weightedSumGo(out, x, w, 1) // the election sums, overwritten below
	for j := range out {
		g := ElectedSign(out[j])
		var num, den float32
		for m, xm := range x {
			v := float32(w[m] * xm[j])
			mask := AgreeMask(v, g)
			num += math.Float32frombits(math.Float32bits(v) & mask)
			den += math.Float32frombits(math.Float32bits(w[m]) & mask)
		}
		r := num
		if norm && den != 0 {
			r = num / den
		}
		out[j] = r
	}
}

// ElectedSign is the sign bit TIES' vote elects from the sum of an entry's
// weighted task-vector values: sum's sign bit, or 0 when sum is ±0 (then
// no value agrees). Branch-free, for the scalar loops (the signs are data).
func ElectedSign(sum float32) uint32 {
	s := math.Float32bits(sum)
	zero := uint32((int64(s&0x7fffffff) - 1) >> 63) // all ones when |sum| = 0
	return s & 0x80000000 &^ zero
}

// AgreeMask is all ones when v is nonzero with sign bit g (ElectedSign),
// else 0: the entries the disjoint mean keeps. Branch-free.
func AgreeMask(v float32, g uint32) uint32 {
	y := math.Float32bits(v) ^ g
	// Agreeing: v ≠ 0 with sign γ, i.e. 1 ≤ y ≤ 0x7fffffff.
	nonzero := ^uint32((int64(y) - 1) >> 63)
	return nonzero &^ uint32(int32(y)>>31)
}

// AbsBits sets dst[j] to the bit pattern of |x[j]| (the sign bit cleared),
// the key magnitude selection ranks by; x must be at least len(dst) long.
func AbsBits(dst []uint32, x []float32) {
	if len(x) < len(dst) {
		panic("vec.AbsBits: input shorter than output")
	}
	absBits(dst, x[:len(dst)])
}

func absBitsGo(dst []uint32, x []float32) {
	x = x[:len(dst)]
	for j, v := range x {
		dst[j] = math.Float32bits(v) & 0x7fffffff
	}
}
