//go:build !(goexperiment.simd && amd64)

package merge

// countFlag is countFlagGo in the plain build.
func countFlag(x [][]float32, b []float32, fw *flagWindows, above []int64, cands [][]uint32, flags []uint8) bool {
	return countFlagGo(x, b, fw, above, cands, flags)
}
