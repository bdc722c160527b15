//go:build amd64 && !purego

package linalg

// The AVX-512 float64 kernels of the CholeskyQR2 orthonormalisation
// (f64kern_amd64.s; their twins are gramGo and applyGo in cholqr.go).

// gramKernel512 is gramGo on AVX-512; ld is in bytes.
//
//go:noescape
func gramKernel512(n int, x, y *float64, ld int, out *float64)

// applyKernel512 is applyGo on AVX-512; ldt, ldy and ldo are in bytes.
//
//go:noescape
func applyKernel512(kk int, t *float64, ldt int, y *float64, ldy int, out *float64, ldo int)

// asmF64Kern returns the assembly float64 kernels when the CPU runs
// AVX-512 (ok false otherwise). The wrappers check the bounds of
// everything the assembly reads or writes.
func asmF64Kern() (f64Kern, bool) {
	if !hasAVX512 {
		return f64Kern{}, false
	}
	gram := func(n int, x, y []float64, ld int, out []float64) {
		n &^= 7
		if n <= 0 {
			clear(out[:gramLanes])
			return
		}
		_, _, _ = x[3*ld+n-1], y[3*ld+n-1], out[gramLanes-1]
		gramKernel512(n, &x[0], &y[0], 8*ld, &out[0])
	}
	apply := func(kk int, t []float64, ldt int, y []float64, ldy int, out []float64, ldo int) {
		if kk <= 0 {
			applyGo(0, t, ldt, y, ldy, out, ldo)
			return
		}
		_, _, _ = t[3*ldt+kk-1], y[(kk-1)*ldy+applyNR-1], out[3*ldo+applyNR-1]
		applyKernel512(kk, &t[0], 8*ldt, &y[0], 8*ldy, &out[0], 8*ldo)
	}
	return f64Kern{name: "avx512", gram: gram, apply: apply}, true
}
