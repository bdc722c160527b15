// Package vec holds the float32 loops that the merge kernels spend their
// time in, each written twice: with 256-bit vectors (AVX2, through Go's
// simd/archsimd) when the build sets GOEXPERIMENT=simd and the CPU has
// AVX2, and in plain Go otherwise.
//
// Both versions round every operation the same way (a multiply and an add,
// never a fused multiply-add), so results are bit for bit the same whichever
// runs: a merge does not change with the machine it runs on.
package vec
