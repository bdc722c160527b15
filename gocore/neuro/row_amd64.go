//go:build goexperiment.simd && amd64

package neuro

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// maxRowTasks bounds the tasks combineRowVec broadcasts.
const maxRowTasks = 16

// combineRowVec is combineRowGo with 8-lane vectors (AVX2), a multiply and
// an add per task (no fused multiply-add); the tail after
// archsimd.ClearAVXUpperBits in the scalar twin.
func combineRowVec(out, w []float32, taus [][]float32, b []float32, cw float32) {
	if !vec.Accelerated() || len(taus) > maxRowTasks {
		combineRowGo(out, w, taus, b, cw)
		return
	}
	if row512 && len(out) >= 16 {
		combineRow16(out, w, taus, b, cw)
		return
	}
	var bv [maxRowTasks]archsimd.Float32x8
	for i, x := range b {
		bv[i] = archsimd.BroadcastFloat32x8(x)
	}
	cv := archsimd.BroadcastFloat32x8(cw)
	n := len(out) &^ 7
	for j := 0; j < n; j += 8 {
		x := archsimd.LoadFloat32x8Slice(w[j:])
		o := cv.Mul(x)
		for i, t := range taus {
			o = o.Add(bv[i].Mul(archsimd.LoadFloat32x8Slice(t[j:])))
		}
		x.Add(o).StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
	combineRowTail(out, w, taus, b, cw, n)
}

// row512: combineRow16 needs AVX-512.
var row512 = vec.Accelerated() && archsimd.X86.AVX512()

// combineRow16 is combineRowVec with 16 lanes (AVX-512): the same
// multiplies and adds, lane by lane; the tail after
// archsimd.ClearAVXUpperBits in the scalar twin.
func combineRow16(out, w []float32, taus [][]float32, b []float32, cw float32) {
	var bv [maxRowTasks]archsimd.Float32x16
	for i, x := range b {
		bv[i] = archsimd.BroadcastFloat32x16(x)
	}
	cv := archsimd.BroadcastFloat32x16(cw)
	n := len(out) &^ 15
	for j := 0; j < n; j += 16 {
		x := archsimd.LoadFloat32x16Slice(w[j:])
		o := cv.Mul(x)
		for i, t := range taus {
			o = o.Add(bv[i].Mul(archsimd.LoadFloat32x16Slice(t[j:])))
		}
		x.Add(o).StoreSlice(out[j:])
	}
	archsimd.ClearAVXUpperBits()
	combineRowTail(out, w, taus, b, cw, n)
}

// combineRowTail is combineRowGo over the entries from n on, which the
// vector loops leave to the scalar twin.
func combineRowTail(out, w []float32, taus [][]float32, b []float32, cw float32, n int) {
	if n == len(out) {
		return
	}
	var tt [maxRowTasks][]float32
	for i, t := range taus {
		tt[i] = t[n:]
	}
	combineRowGo(out[n:], w[n:], tt[:len(taus)], b, cw)
}
