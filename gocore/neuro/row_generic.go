//go:build !(goexperiment.simd && amd64)

package neuro

// combineRowVec is combineRowGo in the plain build.
func combineRowVec(out, w []float32, taus [][]float32, b []float32, cw float32) {
	combineRowGo(out, w, taus, b, cw)
}

// row512 has no effect in the plain build (the tests set it).
var row512 = false
