//go:build !(goexperiment.simd && amd64)

package merge

import "github.com/npsfuse/npsfuse/gocore/vec"

// countSumsVec is countSumsGo in the plain build.
func countSumsVec(x, b []float32, lo, hi uint32, cands []uint32, abv []float32, sl *vec.SumLanes) (int, []uint32, bool) {
	return countSumsGo(x, b, lo, hi, cands, abv, sl)
}

// countSums512 has no effect in the plain build (the tests set it).
var countSums512 = false
