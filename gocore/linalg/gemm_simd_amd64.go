//go:build goexperiment.simd && amd64

package linalg

import (
	"simd/archsimd"
	"unsafe"
)

// Each kernel ends with archsimd.ClearAVXUpperBits (VZEROUPPER), once per
// call: the packing and the rest of the program are scalar Go, compiled to
// legacy SSE instructions, which Intel CPUs slow down many times over while
// the vector registers' upper halves are dirty (see package vec). For the
// same reason the careful kernels test A's entries for zero on their bits
// and load them only into the broadcasts: a float compare (UCOMISS) and the
// load it needs (MOVSS) would be legacy SSE between vector instructions.

// nonzero reports whether the float32 at p is not ±0 (as p's value != 0:
// NaNs are nonzero), without a float compare.
func nonzero(p unsafe.Pointer) bool { return *(*uint32)(p)&0x7fffffff != 0 }

// Panel widths of the vector kernels (2 rows each): five 16-lane vectors
// (AVX-512) and five 8-lane vectors (AVX2), each computed as 3 + 2.
const (
	nr512 = 80
	nr256 = 40
)

// portableKernel returns the widest archsimd kernel the CPU runs, else plain
// Go: the best kernel that gives the bits of gemm's definition.
func portableKernel() microKernel {
	if ks := vectorKernels(); len(ks) > 0 {
		return ks[0]
	}
	return scalarKernel(4, 32)
}

// vectorKernels lists the vector kernels the CPU can run, widest first.
func vectorKernels() []microKernel {
	var ks []microKernel
	if archsimd.X86.AVX512() {
		ks = append(ks, microKernel{name: "avx512", mr: 2, nr: nr512, fn: kernel512, careful: kernel512Careful})
	}
	if archsimd.X86.AVX2() {
		ks = append(ks, microKernel{name: "avx2", mr: 2, nr: nr256, fn: kernel256, careful: kernel256Careful})
	}
	return ks
}

// kernel512 is the 2×80 AVX-512 microkernel, for panels of A without
// zeros. Go allocates 15 vector registers and schedules a block's
// products before its sums, so the tile is done in passes over k of at
// most 3 vectors per row (6 accumulators + 6 products + 2 broadcasts live).
func kernel512(kc int, ap, bp, acc []float32) {
	t := (*[2 * 80]float32)(acc)
	if kc <= 0 {
		return
	}
	// The loops read ap[:2*kc] and bp[:80*kc] at unsafe offsets from
	// their first elements: the bounds are checked once here.
	pa := unsafe.Pointer(&ap[:2*kc][0])
	pb := unsafe.Pointer(&bp[:80*kc][0])
	// Columns 0…47.
	{
		c00 := archsimd.LoadFloat32x16((*[16]float32)(t[0:16]))
		c01 := archsimd.LoadFloat32x16((*[16]float32)(t[16:32]))
		c02 := archsimd.LoadFloat32x16((*[16]float32)(t[32:48]))
		c10 := archsimd.LoadFloat32x16((*[16]float32)(t[80:96]))
		c11 := archsimd.LoadFloat32x16((*[16]float32)(t[96:112]))
		c12 := archsimd.LoadFloat32x16((*[16]float32)(t[112:128]))
		for p := 0; p < kc; p++ {
			a0, a1 := *(*float32)(unsafe.Add(pa, 8*p)), *(*float32)(unsafe.Add(pa, 8*p+4))
			b := unsafe.Add(pb, 320*p+0)
			x0, x1 := archsimd.BroadcastFloat32x16(a0), archsimd.BroadcastFloat32x16(a1)
			v0 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0)))
			c00 = c00.Add(v0.Mul(x0))
			c10 = c10.Add(v0.Mul(x1))
			v1 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64)))
			c01 = c01.Add(v1.Mul(x0))
			c11 = c11.Add(v1.Mul(x1))
			v2 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 128)))
			c02 = c02.Add(v2.Mul(x0))
			c12 = c12.Add(v2.Mul(x1))
		}
		c00.Store((*[16]float32)(t[0:16]))
		c01.Store((*[16]float32)(t[16:32]))
		c02.Store((*[16]float32)(t[32:48]))
		c10.Store((*[16]float32)(t[80:96]))
		c11.Store((*[16]float32)(t[96:112]))
		c12.Store((*[16]float32)(t[112:128]))
	}
	// Columns 48…79.
	{
		c00 := archsimd.LoadFloat32x16((*[16]float32)(t[48:64]))
		c01 := archsimd.LoadFloat32x16((*[16]float32)(t[64:80]))
		c10 := archsimd.LoadFloat32x16((*[16]float32)(t[128:144]))
		c11 := archsimd.LoadFloat32x16((*[16]float32)(t[144:160]))
		for p := 0; p < kc; p++ {
			a0, a1 := *(*float32)(unsafe.Add(pa, 8*p)), *(*float32)(unsafe.Add(pa, 8*p+4))
			b := unsafe.Add(pb, 320*p+192)
			x0, x1 := archsimd.BroadcastFloat32x16(a0), archsimd.BroadcastFloat32x16(a1)
			v0 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0)))
			c00 = c00.Add(v0.Mul(x0))
			c10 = c10.Add(v0.Mul(x1))
			v1 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64)))
			c01 = c01.Add(v1.Mul(x0))
			c11 = c11.Add(v1.Mul(x1))
		}
		c00.Store((*[16]float32)(t[48:64]))
		c01.Store((*[16]float32)(t[64:80]))
		c10.Store((*[16]float32)(t[128:144]))
		c11.Store((*[16]float32)(t[144:160]))
	}
	archsimd.ClearAVXUpperBits()
}

// kernel512Careful is kernel512 with zero skipping: a row whose A entry
// is zero at some p is left untouched at that p.
func kernel512Careful(kc int, ap, bp, acc []float32) {
	t := (*[2 * 80]float32)(acc)
	if kc <= 0 {
		return
	}
	// The loops read ap[:2*kc] and bp[:80*kc] at unsafe offsets from
	// their first elements: the bounds are checked once here.
	pa := unsafe.Pointer(&ap[:2*kc][0])
	pb := unsafe.Pointer(&bp[:80*kc][0])
	// Columns 0…47.
	{
		c00 := archsimd.LoadFloat32x16((*[16]float32)(t[0:16]))
		c01 := archsimd.LoadFloat32x16((*[16]float32)(t[16:32]))
		c02 := archsimd.LoadFloat32x16((*[16]float32)(t[32:48]))
		c10 := archsimd.LoadFloat32x16((*[16]float32)(t[80:96]))
		c11 := archsimd.LoadFloat32x16((*[16]float32)(t[96:112]))
		c12 := archsimd.LoadFloat32x16((*[16]float32)(t[112:128]))
		for p := 0; p < kc; p++ {
			b := unsafe.Add(pb, 320*p+0)
			p0, p1 := unsafe.Add(pa, 8*p), unsafe.Add(pa, 8*p+4)
			n0, n1 := nonzero(p0), nonzero(p1)
			switch {
			case n0 && n1:
				x0, x1 := archsimd.BroadcastFloat32x16(*(*float32)(p0)), archsimd.BroadcastFloat32x16(*(*float32)(p1))
				v0 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0)))
				c00 = c00.Add(v0.Mul(x0))
				c10 = c10.Add(v0.Mul(x1))
				v1 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64)))
				c01 = c01.Add(v1.Mul(x0))
				c11 = c11.Add(v1.Mul(x1))
				v2 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 128)))
				c02 = c02.Add(v2.Mul(x0))
				c12 = c12.Add(v2.Mul(x1))
			case n0:
				x := archsimd.BroadcastFloat32x16(*(*float32)(p0))
				c00 = c00.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0))).Mul(x))
				c01 = c01.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64))).Mul(x))
				c02 = c02.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 128))).Mul(x))
			case n1:
				x := archsimd.BroadcastFloat32x16(*(*float32)(p1))
				c10 = c10.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0))).Mul(x))
				c11 = c11.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64))).Mul(x))
				c12 = c12.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 128))).Mul(x))
			}
		}
		c00.Store((*[16]float32)(t[0:16]))
		c01.Store((*[16]float32)(t[16:32]))
		c02.Store((*[16]float32)(t[32:48]))
		c10.Store((*[16]float32)(t[80:96]))
		c11.Store((*[16]float32)(t[96:112]))
		c12.Store((*[16]float32)(t[112:128]))
	}
	// Columns 48…79.
	{
		c00 := archsimd.LoadFloat32x16((*[16]float32)(t[48:64]))
		c01 := archsimd.LoadFloat32x16((*[16]float32)(t[64:80]))
		c10 := archsimd.LoadFloat32x16((*[16]float32)(t[128:144]))
		c11 := archsimd.LoadFloat32x16((*[16]float32)(t[144:160]))
		for p := 0; p < kc; p++ {
			b := unsafe.Add(pb, 320*p+192)
			p0, p1 := unsafe.Add(pa, 8*p), unsafe.Add(pa, 8*p+4)
			n0, n1 := nonzero(p0), nonzero(p1)
			switch {
			case n0 && n1:
				x0, x1 := archsimd.BroadcastFloat32x16(*(*float32)(p0)), archsimd.BroadcastFloat32x16(*(*float32)(p1))
				v0 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0)))
				c00 = c00.Add(v0.Mul(x0))
				c10 = c10.Add(v0.Mul(x1))
				v1 := archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64)))
				c01 = c01.Add(v1.Mul(x0))
				c11 = c11.Add(v1.Mul(x1))
			case n0:
				x := archsimd.BroadcastFloat32x16(*(*float32)(p0))
				c00 = c00.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0))).Mul(x))
				c01 = c01.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64))).Mul(x))
			case n1:
				x := archsimd.BroadcastFloat32x16(*(*float32)(p1))
				c10 = c10.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 0))).Mul(x))
				c11 = c11.Add(archsimd.LoadFloat32x16((*[16]float32)(unsafe.Add(b, 64))).Mul(x))
			}
		}
		c00.Store((*[16]float32)(t[48:64]))
		c01.Store((*[16]float32)(t[64:80]))
		c10.Store((*[16]float32)(t[128:144]))
		c11.Store((*[16]float32)(t[144:160]))
	}
	archsimd.ClearAVXUpperBits()
}

// kernel256 is the 2×40 AVX2 microkernel, for panels of A without
// zeros. Go allocates 15 vector registers and schedules a block's
// products before its sums, so the tile is done in passes over k of at
// most 3 vectors per row (6 accumulators + 6 products + 2 broadcasts live).
func kernel256(kc int, ap, bp, acc []float32) {
	t := (*[2 * 40]float32)(acc)
	if kc <= 0 {
		return
	}
	// The loops read ap[:2*kc] and bp[:40*kc] at unsafe offsets from
	// their first elements: the bounds are checked once here.
	pa := unsafe.Pointer(&ap[:2*kc][0])
	pb := unsafe.Pointer(&bp[:40*kc][0])
	// Columns 0…23.
	{
		c00 := archsimd.LoadFloat32x8((*[8]float32)(t[0:8]))
		c01 := archsimd.LoadFloat32x8((*[8]float32)(t[8:16]))
		c02 := archsimd.LoadFloat32x8((*[8]float32)(t[16:24]))
		c10 := archsimd.LoadFloat32x8((*[8]float32)(t[40:48]))
		c11 := archsimd.LoadFloat32x8((*[8]float32)(t[48:56]))
		c12 := archsimd.LoadFloat32x8((*[8]float32)(t[56:64]))
		for p := 0; p < kc; p++ {
			a0, a1 := *(*float32)(unsafe.Add(pa, 8*p)), *(*float32)(unsafe.Add(pa, 8*p+4))
			b := unsafe.Add(pb, 160*p+0)
			x0, x1 := archsimd.BroadcastFloat32x8(a0), archsimd.BroadcastFloat32x8(a1)
			v0 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0)))
			c00 = c00.Add(v0.Mul(x0))
			c10 = c10.Add(v0.Mul(x1))
			v1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32)))
			c01 = c01.Add(v1.Mul(x0))
			c11 = c11.Add(v1.Mul(x1))
			v2 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 64)))
			c02 = c02.Add(v2.Mul(x0))
			c12 = c12.Add(v2.Mul(x1))
		}
		c00.Store((*[8]float32)(t[0:8]))
		c01.Store((*[8]float32)(t[8:16]))
		c02.Store((*[8]float32)(t[16:24]))
		c10.Store((*[8]float32)(t[40:48]))
		c11.Store((*[8]float32)(t[48:56]))
		c12.Store((*[8]float32)(t[56:64]))
	}
	// Columns 24…39.
	{
		c00 := archsimd.LoadFloat32x8((*[8]float32)(t[24:32]))
		c01 := archsimd.LoadFloat32x8((*[8]float32)(t[32:40]))
		c10 := archsimd.LoadFloat32x8((*[8]float32)(t[64:72]))
		c11 := archsimd.LoadFloat32x8((*[8]float32)(t[72:80]))
		for p := 0; p < kc; p++ {
			a0, a1 := *(*float32)(unsafe.Add(pa, 8*p)), *(*float32)(unsafe.Add(pa, 8*p+4))
			b := unsafe.Add(pb, 160*p+96)
			x0, x1 := archsimd.BroadcastFloat32x8(a0), archsimd.BroadcastFloat32x8(a1)
			v0 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0)))
			c00 = c00.Add(v0.Mul(x0))
			c10 = c10.Add(v0.Mul(x1))
			v1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32)))
			c01 = c01.Add(v1.Mul(x0))
			c11 = c11.Add(v1.Mul(x1))
		}
		c00.Store((*[8]float32)(t[24:32]))
		c01.Store((*[8]float32)(t[32:40]))
		c10.Store((*[8]float32)(t[64:72]))
		c11.Store((*[8]float32)(t[72:80]))
	}
	archsimd.ClearAVXUpperBits()
}

// kernel256Careful is kernel256 with zero skipping: a row whose A entry
// is zero at some p is left untouched at that p.
func kernel256Careful(kc int, ap, bp, acc []float32) {
	t := (*[2 * 40]float32)(acc)
	if kc <= 0 {
		return
	}
	// The loops read ap[:2*kc] and bp[:40*kc] at unsafe offsets from
	// their first elements: the bounds are checked once here.
	pa := unsafe.Pointer(&ap[:2*kc][0])
	pb := unsafe.Pointer(&bp[:40*kc][0])
	// Columns 0…23.
	{
		c00 := archsimd.LoadFloat32x8((*[8]float32)(t[0:8]))
		c01 := archsimd.LoadFloat32x8((*[8]float32)(t[8:16]))
		c02 := archsimd.LoadFloat32x8((*[8]float32)(t[16:24]))
		c10 := archsimd.LoadFloat32x8((*[8]float32)(t[40:48]))
		c11 := archsimd.LoadFloat32x8((*[8]float32)(t[48:56]))
		c12 := archsimd.LoadFloat32x8((*[8]float32)(t[56:64]))
		for p := 0; p < kc; p++ {
			b := unsafe.Add(pb, 160*p+0)
			p0, p1 := unsafe.Add(pa, 8*p), unsafe.Add(pa, 8*p+4)
			n0, n1 := nonzero(p0), nonzero(p1)
			switch {
			case n0 && n1:
				x0, x1 := archsimd.BroadcastFloat32x8(*(*float32)(p0)), archsimd.BroadcastFloat32x8(*(*float32)(p1))
				v0 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0)))
				c00 = c00.Add(v0.Mul(x0))
				c10 = c10.Add(v0.Mul(x1))
				v1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32)))
				c01 = c01.Add(v1.Mul(x0))
				c11 = c11.Add(v1.Mul(x1))
				v2 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 64)))
				c02 = c02.Add(v2.Mul(x0))
				c12 = c12.Add(v2.Mul(x1))
			case n0:
				x := archsimd.BroadcastFloat32x8(*(*float32)(p0))
				c00 = c00.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0))).Mul(x))
				c01 = c01.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32))).Mul(x))
				c02 = c02.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 64))).Mul(x))
			case n1:
				x := archsimd.BroadcastFloat32x8(*(*float32)(p1))
				c10 = c10.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0))).Mul(x))
				c11 = c11.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32))).Mul(x))
				c12 = c12.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 64))).Mul(x))
			}
		}
		c00.Store((*[8]float32)(t[0:8]))
		c01.Store((*[8]float32)(t[8:16]))
		c02.Store((*[8]float32)(t[16:24]))
		c10.Store((*[8]float32)(t[40:48]))
		c11.Store((*[8]float32)(t[48:56]))
		c12.Store((*[8]float32)(t[56:64]))
	}
	// Columns 24…39.
	{
		c00 := archsimd.LoadFloat32x8((*[8]float32)(t[24:32]))
		c01 := archsimd.LoadFloat32x8((*[8]float32)(t[32:40]))
		c10 := archsimd.LoadFloat32x8((*[8]float32)(t[64:72]))
		c11 := archsimd.LoadFloat32x8((*[8]float32)(t[72:80]))
		for p := 0; p < kc; p++ {
			b := unsafe.Add(pb, 160*p+96)
			p0, p1 := unsafe.Add(pa, 8*p), unsafe.Add(pa, 8*p+4)
			n0, n1 := nonzero(p0), nonzero(p1)
			switch {
			case n0 && n1:
				x0, x1 := archsimd.BroadcastFloat32x8(*(*float32)(p0)), archsimd.BroadcastFloat32x8(*(*float32)(p1))
				v0 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0)))
				c00 = c00.Add(v0.Mul(x0))
				c10 = c10.Add(v0.Mul(x1))
				v1 := archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32)))
				c01 = c01.Add(v1.Mul(x0))
				c11 = c11.Add(v1.Mul(x1))
			case n0:
				x := archsimd.BroadcastFloat32x8(*(*float32)(p0))
				c00 = c00.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0))).Mul(x))
				c01 = c01.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32))).Mul(x))
			case n1:
				x := archsimd.BroadcastFloat32x8(*(*float32)(p1))
				c10 = c10.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 0))).Mul(x))
				c11 = c11.Add(archsimd.LoadFloat32x8((*[8]float32)(unsafe.Add(b, 32))).Mul(x))
			}
		}
		c00.Store((*[8]float32)(t[24:32]))
		c01.Store((*[8]float32)(t[32:40]))
		c10.Store((*[8]float32)(t[64:72]))
		c11.Store((*[8]float32)(t[72:80]))
	}
	archsimd.ClearAVXUpperBits()
}
