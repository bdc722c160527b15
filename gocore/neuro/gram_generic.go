//go:build !(goexperiment.simd && amd64)

package neuro

// gramsVec has no vector loops in the plain build: Decompose calls Dsdot.
func gramsVec([]float64, [][]float32, int, int, bool) bool { return false }
