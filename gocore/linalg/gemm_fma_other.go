//go:build !amd64 || purego

package linalg

// fmaKernels lists the assembly FMA kernels: none in this build (not amd64,
// or -tags purego), which runs the portable kernels only.
func fmaKernels() []microKernel { return nil }

// fmaPeakFlops is 0: this build has no register-only FMA loop for the
// benchmarks' peak estimate.
func fmaPeakFlops() float64 { return 0 }

// fmaPeak does nothing in this build.
func fmaPeak(int) float32 { return 0 }
