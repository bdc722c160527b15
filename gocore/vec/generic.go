//go:build !(goexperiment.simd && amd64)

package vec

const accelerated = false

func deltaSum(out, base []float32, x [][]float32, w []float32, lam float32) {
	deltaSumGo(out, base, x, w, lam)
}

func weightedSum(out []float32, x [][]float32, w []float32, scale float32) {
	weightedSumGo(out, x, w, scale)
}

func finite(x []float32) bool { return finiteGo(x) }

func sub(out, a, b []float32) { subGo(out, a, b) }

func widenBF16(dst []float32, src []uint16) { widenBF16Go(dst, src) }

func narrowBF16(dst []uint16, src []float32) { narrowBF16Go(dst, src) }

func absDiff(out, a, b []float32) { absDiffGo(out, a, b) }

func countWindow(x []float32, lo, hi uint32, cands []uint32) (int64, []uint32) {
	return countWindowGo(x, lo, hi, cands)
}

func keepTop(x []float32, b uint32, allow int) int { return keepTopGo(x, b, allow) }

func disjointMean(out []float32, x [][]float32, w []float32, norm bool) {
	disjointMeanGo(out, x, w, norm)
}

func absBits(dst []uint32, x []float32) { absBitsGo(dst, x) }

func scale(out, x []float32, s float32) { scaleGo(out, x, s) }

func dareDrop(tau []float32, key, start, thr uint64, scale float32) {
	dareDropGo(tau, key, start, thr, scale)
}

func maxAbsBits(x []float32) uint32 { return maxAbsBitsGo(x) }

// DropVectorized reports whether MergeTasks draws TaskMerge.Drop with a
// vector loop; this build has none.
func DropVectorized() bool { return false }

func dareSums(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64) (before, after float64, ok bool) {
	return dareSumsGo(x32, b32, x16, b16, key, start, thr)
}

func sumF64(x []float32) float64 { return sumF64Go(x) }
