//go:build goexperiment.simd && amd64 && !purego

package linalg

import (
	"testing"

	"github.com/npsfuse/npsfuse/gocore/internal/avxstate"
)

// TestF64KernelsLeaveUpperClean fails if math.Exp right after an assembly
// float64 kernel of the CholeskyQR2 runs more than 3× slower than right
// after a VZEROUPPER: the kernel returned with the upper halves of the
// vector registers dirty (see avxstate).
func TestF64KernelsLeaveUpperClean(t *testing.T) {
	const maxSlowdown, reps = 3, 9
	k, ok := asmF64Kern()
	if !avxstate.Available() || !ok {
		t.Skip("no AVX-512: the assembly float64 kernels do not run")
	}
	if p := avxstate.Penalty(reps); p < maxSlowdown {
		t.Skipf("this CPU runs math.Exp only %.1f× slower with dirty upper halves: nothing to see", p)
	}
	const n, ld = 64, 64
	x := make([]float64, 4*ld)
	for i := range x {
		x[i] = float64(i%13) - 6
	}
	out := make([]float64, max(gramLanes, 4*applyNR))
	t4 := make([]float64, 4*4)
	y := make([]float64, 4*applyNR)
	for name, fn := range map[string]func(){
		"gram":  func() { k.gram(n, x, x, ld, out) },
		"apply": func() { k.apply(4, t4, 4, y, applyNR, out, applyNR) },
	} {
		if s := avxstate.ExpSlowdown(fn, reps); s > maxSlowdown {
			t.Errorf("%s: math.Exp %.1f× slower right after it (limit %d): upper halves left dirty", name, s, maxSlowdown)
		}
	}
}
