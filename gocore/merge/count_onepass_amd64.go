//go:build goexperiment.simd && amd64

package merge

import (
	"simd/archsimd"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// countFlag is countFlagGo with 8-lane vectors (AVX2): per group of eight
// entries, the magnitudes of every model, then per window a count of the
// lanes above hi and, for the rare lanes inside the window, the candidates
// and the flags. As in package vec, no scalar float instruction runs
// between the first vector instruction and archsimd.ClearAVXUpperBits:
// lane values are read as integers (the AVX→SSE transition penalty).
func countFlag(x [][]float32, b []float32, fw *flagWindows, above []int64, cands [][]uint32, flags []uint8) bool {
	if !vec.Accelerated() || len(x) > 8 {
		return countFlagGo(x, b, fw, above, cands, flags)
	}
	for _, xm := range x {
		if len(xm) < len(b) {
			panic("merge.countFlag: input shorter than the base")
		}
	}
	T, W := len(x), fw.n
	n := len(b) &^ 7
	var lv, hv [maxFlagWindows]archsimd.Int32x8
	var fm [maxFlagWindows]uint8
	for i := range W {
		lv[i] = archsimd.BroadcastInt32x8(int32(fw.lo[i]))
		hv[i] = archsimd.BroadcastInt32x8(int32(fw.hi[i]))
		if fw.flag[i] {
			fm[i] = 0xff
		}
	}
	abs := archsimd.BroadcastInt32x8(0x7fffffff)
	var cnt [maxFlagWindows]archsimd.Int32x8 // per lane: at most len(b)/8 < 2³¹
	var lanes [8]int32
	var a [8]archsimd.Int32x8
	var zf, acc archsimd.Float32x8
	wm := fw.wm
	for j := 0; j < n; j += 8 {
		bv := archsimd.LoadFloat32x8Slice(b[j:])
		acc = acc.Add(bv.Mul(zf))
		for m := range T {
			xv := archsimd.LoadFloat32x8Slice(x[m][j:])
			acc = acc.Add(xv.Mul(zf))
			a[m] = xv.Sub(bv).AsInt32x8().And(abs)
		}
		var f uint8
		for i := range W {
			av := a[wm[i]]
			cnt[i] = cnt[i].Sub(av.Greater(hv[i]).ToInt32x8()) // −1 per lane above
			if in := av.GreaterEqual(lv[i]).And(av.LessEqual(hv[i])).ToBits(); in != 0 {
				av.Store(&lanes)
				for l := range 8 {
					if in&(1<<l) != 0 {
						cands[i] = append(cands[i], uint32(lanes[l]))
					}
				}
				f |= in & fm[i]
			}
		}
		flags[j>>3] = f
	}
	var cl [maxFlagWindows][8]int32
	for i := range W {
		cnt[i].Store(&cl[i])
	}
	// The clear goes after the branch (see package vec's finite).
	fin := true
	if acc.IsNaN().ToBits() != 0 {
		archsimd.ClearAVXUpperBits()
		fin = false
	} else {
		archsimd.ClearAVXUpperBits()
	}
	for i := range W {
		for _, c := range cl[i] {
			above[i] += int64(c)
		}
	}
	if n == len(b) {
		return fin
	}
	tx := make([][]float32, T)
	for m, xm := range x {
		tx[m] = xm[n:]
	}
	return countFlagGo(tx, b[n:], fw, above, cands, flags[n>>3:]) && fin
}
