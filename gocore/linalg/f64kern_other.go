//go:build !amd64 || purego

package linalg

// asmF64Kern reports that this build (not amd64, or -tags purego) has no
// assembly float64 kernels: RandomizedSVD orthonormalises by Householder.
func asmF64Kern() (f64Kern, bool) { return f64Kern{}, false }
