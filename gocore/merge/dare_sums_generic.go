//go:build !(goexperiment.simd && amd64)

package merge

// dareSums is dareSumsGo (no vector loop in this build).
func dareSums(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64) (before, after float64, ok bool) {
	return dareSumsGo(x32, b32, x16, b16, key, start, thr)
}
