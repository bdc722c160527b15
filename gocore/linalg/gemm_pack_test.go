package linalg

import (
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// A B operand kept packed in a packCache gives the bits of the product
// that packs per task, on first use, on reuse, and after the cache is
// handed another operand (or the same data with another shape), for the
// products by Qᵀ of RandomizedSVD (A and Q both read transposed).
func TestGemmPackCacheBits(t *testing.T) {
	ks := fmaKernels()
	if len(ks) == 0 {
		t.Skip("no assembly FMA kernels in this build or on this CPU")
	}
	for _, kern := range ks {
		var pc packCache
		mats := map[uint64]Matrix{1: uniformMatrix(1, 300, 170), 2: uniformMatrix(2, 300, 170), 3: uniformMatrix(3, 640, 1000)}
		for i, sh := range []struct {
			m, n, l int
			seed    uint64 // which of mats (its data reshaped to m×n)
		}{
			{300, 170, 74, 1}, {300, 170, 74, 1}, {300, 170, 74, 2}, {170, 300, 13, 2}, {170, 300, 13, 2}, {640, 1000, 74, 3}, {300, 170, 74, 1},
		} {
			a := Matrix{Rows: sh.m, Cols: sh.n, Data: mats[sh.seed].Data}
			qt := uniformMatrix(sh.seed+10, sh.l, sh.m).Data
			want := make([]float32, sh.l*sh.n)
			got := slices.Clone(want)
			aOp := operand{data: a.Data, ld: sh.n, trans: true}
			qOp := operand{data: qt, ld: sh.m, trans: true}
			gemmWith(parallel.Pool{Threads: 2}, kern, sh.n, sh.l, sh.m, aOp, qOp, 0, operand{data: want, ld: sh.n, trans: true})
			gemmPacked(parallel.Pool{Threads: 3}, kern, sh.n, sh.l, sh.m, aOp, qOp, 0, operand{data: got, ld: sh.n, trans: true}, &pc)
			if !bitsEqual32(want, got) {
				t.Fatalf("%s, product %d (%d×%d, l = %d): bits differ with the packed cache", kern.name, i, sh.m, sh.n, sh.l)
			}
			if pc.b != &a.Data[0] {
				t.Fatalf("%s, product %d: the cache does not hold this product's A", kern.name, i)
			}
		}
	}
}
