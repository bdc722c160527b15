//go:build !(goexperiment.simd && amd64)

package linalg

// portableKernel returns the plain-Go kernel: this build has no archsimd kernels.
func portableKernel() microKernel { return scalarKernel(4, 32) }

// vectorKernels lists the vector kernels this build and CPU can run: none.
func vectorKernels() []microKernel { return nil }
