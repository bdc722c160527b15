//go:build !(goexperiment.simd && amd64)

package linalg

// The float64 kernels: plain Go in this build.
var (
	rotKernel   = rotGo
	rank4Kernel = rank4Go
)
