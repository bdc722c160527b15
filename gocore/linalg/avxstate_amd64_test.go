//go:build goexperiment.simd && amd64

package linalg

import (
	"testing"

	"github.com/npsfuse/npsfuse/gocore/internal/avxstate"
)

// TestVectorKernelsLeaveUpperClean fails if math.Exp right after a GEMM
// microkernel (each vector kernel the CPU runs, plain and careful) runs
// more than 3× slower than right after a VZEROUPPER: the kernel left the
// upper halves of the registers dirty (see avxstate). (A whole product is
// not checked: its kernels run on parallel.For's goroutines.)
func TestVectorKernelsLeaveUpperClean(t *testing.T) {
	const maxSlowdown, reps = 3, 9
	ks := vectorKernels()
	if !avxstate.Available() || len(ks) == 0 {
		t.Skip("no AVX2: the vector kernels do not run")
	}
	p := avxstate.Penalty(reps)
	if p < maxSlowdown {
		t.Skipf("this CPU runs math.Exp only %.1f× slower with dirty upper halves: nothing to see", p)
	}
	t.Logf("math.Exp runs %.0f× slower with dirty upper halves on this CPU", p)
	const kc = 64
	ap := make([]float32, 2*kc)
	for i := range ap {
		ap[i] = float32(i%7) - 3 // zeros for the careful kernels to skip
	}
	for _, k := range ks {
		bp := make([]float32, k.nr*kc)
		for i := range bp {
			bp[i] = float32(i%11) * 0.1
		}
		acc := make([]float32, k.mr*k.nr)
		for _, tc := range []struct {
			name string
			run  func()
		}{
			{"fn", func() { k.fn(kc, ap, bp, acc) }},
			{"careful", func() { k.careful(kc, ap, bp, acc) }},
		} {
			if s := avxstate.ExpSlowdown(tc.run, reps); s > maxSlowdown {
				t.Errorf("%s/%s: math.Exp %.1f× slower right after it (limit %d): upper halves left dirty",
					k.name, tc.name, s, maxSlowdown)
			}
		}
	}
}
