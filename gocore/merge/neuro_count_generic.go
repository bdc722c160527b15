//go:build !(goexperiment.simd && amd64)

package merge

// countSumsVec is countSumsGo in the plain build.
func countSumsVec(x, b []float32, lo, hi uint32, cands []uint32, mags, abv []float32) (int64, int, []uint32, bool) {
	return countSumsGo(x, b, lo, hi, cands, mags, abv)
}

// countSums512 has no effect in the plain build (the tests set it).
var countSums512 = false
