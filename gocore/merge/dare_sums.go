package merge

import (
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// dareChunkSums sets acc[2m] and acc[2m+1] to DARE's rescale sums of chunk
// ch for every model through vec.DareSums, and reports whether it could (every
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
			before, after, ok = vec.DareSums(x.F32[ch.lo:ch.hi], b.F32[ch.lo:ch.hi], nil, nil, key, uint64(ch.lo), thr)
		case x.DType == tensor.BF16 && b.DType == tensor.BF16:
			before, after, ok = vec.DareSums(nil, nil, x.U16[ch.lo:ch.hi], b.U16[ch.lo:ch.hi], key, uint64(ch.lo), thr)
		}
		if !ok {
			return false
		}
		acc[2*m], acc[2*m+1] = before, after
	}
	return true
}
