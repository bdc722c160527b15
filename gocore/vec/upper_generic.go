//go:build !(goexperiment.simd && amd64)

package vec

// ClearAVXUpper does nothing in this build (see its SIMD twin in
// simd_amd64.go: there it clears the vector registers' upper halves).
func ClearAVXUpper() {}
