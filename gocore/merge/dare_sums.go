package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// dareSumsGo returns DARE's rescale sums over one chunk of one model, τ =
// x − b (float32, or bfloat16 when x16 and b16 are set; entry j is element
// start+j of stream key): Σ|τ| and Σ|τ̂|, τ̂ the entries kept by the drop
// of threshold thr (vec.DareDrop), each summed as dellaAbsSum sums, so the
// same bits as dellaAbsSum(τ), DareDrop(τ, key, start, thr, 1),
// dellaAbsSum(τ). ok is false, with the sums unspecified, when some τ
// entry is not finite: the caller then takes the separate loops, which
// name the bad input.
func dareSumsGo(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64) (before, after float64, ok bool) {
	var bs, as [8]float64
	return dareSumsTail(x32, b32, x16, b16, key, start, thr, 0, &bs, &as)
}

// dareSumsTail adds entries j ≥ from to the lanes' sums and folds them.
func dareSumsTail(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64, from int, bs, as *[8]float64) (before, after float64, ok bool) {
	n := max(len(x32), len(x16))
	for j := from; j < n; j++ {
		var x, b float32
		if x16 != nil {
			x, b = math.Float32frombits(uint32(x16[j])<<16), math.Float32frombits(uint32(b16[j])<<16)
		} else {
			x, b = x32[j], b32[j]
		}
		t := x - b
		if math.IsNaN(float64(t)) || math.IsInf(float64(t), 0) {
			return 0, 0, false
		}
		a := math.Abs(float64(t))
		bs[j&7] += a
		if rng.Bits(key, start+uint64(j))>>40 < thr { // a dropped entry adds +0
			as[j&7] += a
		}
	}
	fold := func(s *[8]float64) float64 { return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) }
	return fold(bs), fold(as), true
}

// dareChunkSums sets acc[2m] and acc[2m+1] to DARE's rescale sums of chunk
// ch for every model through dareSums, and reports whether it could (every
// model and the base stored as float32, or all as bfloat16, and every τ
// entry finite); the caller otherwise takes the separate loops.
func dareChunkSums(e *engine, ch chunkRef, acc []float64) bool {
	t := &e.tensors[ch.ti]
	b := t.Base
	for m := range e.T {
		x := t.Models[m]
		dr := dareDrop(e, m, ch.ti)
		key, thr := dr.Key, dr.Thr
		var before, after float64
		var ok bool
		switch {
		case x.DType == tensor.F32 && b.DType == tensor.F32:
			before, after, ok = dareSums(x.F32[ch.lo:ch.hi], b.F32[ch.lo:ch.hi], nil, nil, key, uint64(ch.lo), thr)
		case x.DType == tensor.BF16 && b.DType == tensor.BF16:
			before, after, ok = dareSums(nil, nil, x.U16[ch.lo:ch.hi], b.U16[ch.lo:ch.hi], key, uint64(ch.lo), thr)
		}
		if !ok {
			return false
		}
		acc[2*m], acc[2*m+1] = before, after
	}
	return true
}
