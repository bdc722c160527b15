//go:build goexperiment.simd && amd64

package vec

import (
	"math/bits"
	"simd/archsimd"
)

// popcount8 counts the set bits of a lane mask.
func popcount8(b uint8) int64 { return int64(bits.OnesCount8(b)) }

func absDiff(out, a, b []float32) {
	if !accelerated {
		absDiffGo(out, a, b)
		return
	}
	n := len(out) &^ (lanes - 1)
	m := archsimd.BroadcastInt32x8(0x7fffffff)
	for j := 0; j < n; j += lanes {
		d := archsimd.LoadFloat32x8Slice(a[j:]).Sub(archsimd.LoadFloat32x8Slice(b[j:]))
		d.AsInt32x8().And(m).AsFloat32x8().StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits() // see the note on accelerated
	absDiffGo(out[n:], a[n:], b[n:])
}

// loadBits loads 8 float32 lanes as their bit patterns.
func loadBits(x []float32) archsimd.Int32x8 {
	return archsimd.LoadFloat32x8Slice(x).AsInt32x8()
}

func countWindow(x []float32, lo, hi uint32, cands []uint32) (int64, []uint32) {
	// Signed lane compares order magnitudes correctly below 2³¹.
	if !accelerated || lo > 0x7fffffff || hi > 0x7fffffff {
		return countWindowGo(x, lo, hi, cands)
	}
	n := len(x) &^ (lanes - 1)
	lv := archsimd.BroadcastInt32x8(int32(lo))
	hv := archsimd.BroadcastInt32x8(int32(hi))
	var above int64
	var bits [lanes]int32
	for j := 0; j < n; j += lanes {
		a := loadBits(x[j:])
		above += popcount8(a.Greater(hv).ToBits())
		if in := a.GreaterEqual(lv).And(a.LessEqual(hv)).ToBits(); in != 0 {
			// The bits come from the vector: math.Float32bits(x[j+l])
			// would be a legacy SSE MOVSS+MOVD between vector instructions.
			a.Store(&bits)
			for l := range lanes {
				if in&(1<<l) != 0 {
					cands = append(cands, uint32(bits[l]))
				}
			}
		}
	}
	archsimd.ClearAVXUpperBits()
	tail, cands := countWindowGo(x[n:], lo, hi, cands)
	return above + tail, cands
}

func keepTop(x []float32, b uint32, allow int) int {
	if !accelerated || b > 0x7fffffff {
		return keepTopGo(x, b, allow)
	}
	n := len(x) &^ (lanes - 1)
	bv := archsimd.BroadcastInt32x8(int32(b))
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	for j := 0; j < n; j += lanes {
		v := archsimd.LoadFloat32x8Slice(x[j:])
		a := v.AsInt32x8().And(abs)
		keep := a.Greater(bv)
		if allow < 0 {
			keep = a.GreaterEqual(bv)
		} else if allow > 0 && a.Equal(bv).ToBits() != 0 {
			// keepTopGo (inlined) reads the floats with legacy SSE: clear
			// first (a rare branch: a group holding a tie at the bound).
			archsimd.ClearAVXUpperBits()
			allow = keepTopGo(x[j:j+lanes], b, allow)
			continue
		}
		v.Masked(keep).StoreSlice(x[j:])
	}
	archsimd.ClearAVXUpperBits()
	return keepTopGo(x[n:], b, allow)
}

func disjointMean(out []float32, x [][]float32, w []float32, norm bool) {
	if !accelerated {
		disjointMeanGo(out, x, w, norm)
		return
	}
	n := len(out) &^ (lanes - 1)
	var buf [8]archsimd.Float32x8
	wv := broadcast(&buf, w)
	sign := archsimd.BroadcastInt32x8(-0x80000000)
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	// Zero values, not BroadcastFloat32x8(0) (a legacy SSE XORPS).
	var zi archsimd.Int32x8
	var zf archsimd.Float32x8
	for j := 0; j < n; j += lanes {
		sum := archsimd.LoadFloat32x8Slice(x[0][j:]).Mul(wv[0])
		for m := 1; m < len(x); m++ {
			sum = sum.Add(archsimd.LoadFloat32x8Slice(x[m][j:]).Mul(wv[m]))
		}
		s := sum.AsInt32x8()
		// γ's sign bit, cleared where |sum| = 0.
		g := s.And(sign).Masked(s.And(abs).NotEqual(zi))
		var num, den archsimd.Float32x8
		for m := range x {
			v := archsimd.LoadFloat32x8Slice(x[m][j:]).Mul(wv[m])
			agree := v.AsInt32x8().Xor(g).Greater(zi)
			num = num.Add(v.Masked(agree))
			den = den.Add(wv[m].Masked(agree))
		}
		r := num
		if norm {
			r = num.Div(den).Merge(num, den.NotEqual(zf))
		}
		r.StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
	if n < len(out) {
		disjointMeanGo(out[n:], tails(x, n), w, norm)
	}
}

func absBits(dst []uint32, x []float32) {
	if !accelerated {
		absBitsGo(dst, x)
		return
	}
	n := len(dst) &^ (lanes - 1)
	m := archsimd.BroadcastUint32x8(0x7fffffff)
	for j := 0; j < n; j += lanes {
		archsimd.LoadFloat32x8Slice(x[j:]).AsUint32x8().And(m).StoreSlice(dst[j:])
	}
	archsimd.ClearAVXUpperBits()
	absBitsGo(dst[n:], x[n:])
}
