//go:build amd64 && !purego

package linalg

// The assembly FMA micro-kernels (gemm_fma_amd64.s): AVX-512 (5×80 tile,
// 25 ZMM accumulators) and AVX2+FMA (6×16 tile, 12 YMM accumulators),
// chosen at run time from CPUID and the OS's saved register state (XGETBV).
// They compute each output element as one chain of fused multiply-adds in
// k order (see gemm.go), so they agree with each other bit for bit but not
// with the plain-Go kernel (which rounds the product and the sum
// separately); -tags purego builds without them.

// fmaKernel512 and fmaKernel256 update the 5×80 (6×16) tile at acc with
// kc steps; A's entry (r, p) is at a + r·rs + p·cs (byte strides).
//
//go:noescape
func fmaKernel512(kc int, a *float32, rs, cs int, bp, acc *float32)

//go:noescape
func fmaKernel256(kc int, a *float32, rs, cs int, bp, acc *float32)

// fmaPeak512 and fmaPeak256 run n iterations of 24 (12) independent FMAs on
// registers only, for the benchmarks' peak estimate.
func fmaPeak512(n int) float32
func fmaPeak256(n int) float32

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
func xgetbv0() (eax, edx uint32)

// cpuFeatures reports whether the CPU and the OS support AVX2 with FMA and
// AVX-512F: the instruction sets (CPUID) and the saving of the YMM, and for
// AVX-512 the opmask and ZMM, register state (XCR0 via XGETBV).
func cpuFeatures() (avx2fma, avx512 bool) {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false, false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	const (
		fma     = 1 << 12
		osxsave = 1 << 27
		avx     = 1 << 28
	)
	if ecx1&(fma|osxsave|avx) != fma|osxsave|avx {
		return false, false
	}
	xcr0, _ := xgetbv0()
	const (
		sseYMM   = 1<<1 | 1<<2
		zmmState = 1<<5 | 1<<6 | 1<<7
	)
	if xcr0&sseYMM != sseYMM {
		return false, false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	const (
		avx2    = 1 << 5
		avx512f = 1 << 16
	)
	avx2fma = ebx7&avx2 != 0
	avx512 = avx2fma && ebx7&avx512f != 0 && xcr0&zmmState == zmmState
	return avx2fma, avx512
}

var hasAVX2FMA, hasAVX512 = cpuFeatures()

// Tiles of the assembly kernels.
const (
	mr512, nr512fma = 5, 80
	mr256, nr256fma = 6, 16
)

// fmaKernels lists the assembly FMA kernels the CPU can run, widest first.
func fmaKernels() []microKernel {
	var ks []microKernel
	if hasAVX512 {
		ks = append(ks, fmaMicroKernel("fma512", mr512, nr512fma, 256, fmaKernel512))
	}
	if hasAVX2FMA {
		ks = append(ks, fmaMicroKernel("fma256", mr256, nr256fma, 512, fmaKernel256))
	}
	return ks
}

// fmaMicroKernel wraps an assembly kernel of mr×nr tiles: direct reads A
// where it lies (entry (r, p) at a[r*rs+p*cs]), fn reads a packed panel.
// Both check the bounds of everything the assembly reads or writes.
func fmaMicroKernel(name string, mr, nr, kc int, asm func(kc int, a *float32, rs, cs int, bp, acc *float32)) microKernel {
	direct := func(kc int, a []float32, rs, cs int, bp, acc []float32) {
		if kc <= 0 {
			return
		}
		_, _, _ = a[(mr-1)*rs+(kc-1)*cs], bp[nr*kc-1], acc[mr*nr-1]
		asm(kc, &a[0], 4*rs, 4*cs, &bp[0], &acc[0])
	}
	fn := func(kc int, ap, bp, acc []float32) { direct(kc, ap, 1, mr, bp, acc) }
	return microKernel{name: name, mr: mr, nr: nr, fn: fn, careful: fn, direct: direct, fused: true, kc: kc}
}

// fmaPeakFlops returns the flops of one iteration of fmaPeak (0 without
// FMA kernels).
func fmaPeakFlops() float64 {
	switch {
	case hasAVX512:
		return 24 * 16 * 2
	case hasAVX2FMA:
		return 12 * 8 * 2
	}
	return 0
}

// fmaPeak runs n iterations of the register-only FMA loop of the widest
// kernel (the benchmarks' peak estimate).
func fmaPeak(n int) float32 {
	switch {
	case hasAVX512:
		return fmaPeak512(n)
	case hasAVX2FMA:
		return fmaPeak256(n)
	}
	return 0
}
