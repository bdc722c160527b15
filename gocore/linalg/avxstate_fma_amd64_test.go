//go:build goexperiment.simd && amd64 && !purego

package linalg

import (
	"testing"

	"github.com/npsfuse/npsfuse/gocore/internal/avxstate"
)

// TestFMAKernelsLeaveUpperClean fails if math.Exp right after an assembly
// FMA kernel (or the peak loop) runs more than 3× slower than right after
// a VZEROUPPER: the routine returned with the upper halves of the vector
// registers dirty (see avxstate).
func TestFMAKernelsLeaveUpperClean(t *testing.T) {
	const maxSlowdown, reps = 3, 9
	ks := fmaKernels()
	if !avxstate.Available() || len(ks) == 0 {
		t.Skip("no AVX2+FMA: the assembly kernels do not run")
	}
	p := avxstate.Penalty(reps)
	if p < maxSlowdown {
		t.Skipf("this CPU runs math.Exp only %.1f× slower with dirty upper halves: nothing to see", p)
	}
	const kc = 64
	for _, k := range ks {
		ap := make([]float32, k.mr*kc)
		bp := make([]float32, k.nr*kc)
		acc := make([]float32, k.mr*k.nr)
		for i := range ap {
			ap[i] = float32(i%7) - 3
		}
		for i := range bp {
			bp[i] = float32(i%11) * 0.1
		}
		if s := avxstate.ExpSlowdown(func() { k.fn(kc, ap, bp, acc) }, reps); s > maxSlowdown {
			t.Errorf("%s: math.Exp %.1f× slower right after it (limit %d): upper halves left dirty", k.name, s, maxSlowdown)
		}
	}
	if s := avxstate.ExpSlowdown(func() { fmaPeak(64) }, reps); s > maxSlowdown {
		t.Errorf("fmaPeak: math.Exp %.1f× slower right after it (limit %d): upper halves left dirty", s, maxSlowdown)
	}
}
