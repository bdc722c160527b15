//go:build !(goexperiment.simd && amd64)

package linalg

// bestKernel returns the plain-Go kernel: this build has no vector kernels.
func bestKernel() microKernel { return scalarKernel(4, 32) }

// vectorKernels lists the vector kernels this build and CPU can run: none.
func vectorKernels() []microKernel { return nil }
