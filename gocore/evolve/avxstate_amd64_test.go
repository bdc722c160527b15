//go:build goexperiment.simd && amd64

package evolve

import (
	"testing"

	"github.com/npsfuse/npsfuse/gocore/internal/avxstate"
	"github.com/npsfuse/npsfuse/gocore/search"
)

// TestVectorLoopsLeaveUpperClean fails if math.Exp right after a vector
// loop of the package (dense and mutate, every strategy, with and without
// a scalar tail) runs more than 3× slower than right after a VZEROUPPER:
// the loop left the upper halves of the registers dirty (see avxstate).
func TestVectorLoopsLeaveUpperClean(t *testing.T) {
	const maxSlowdown, reps = 3, 9
	if !avxstate.Available() || !accelerated {
		t.Skip("no AVX2: the vector loops do not run")
	}
	p := avxstate.Penalty(reps)
	if p < maxSlowdown {
		t.Skipf("this CPU runs math.Exp only %.1f× slower with dirty upper halves: nothing to see", p)
	}
	t.Logf("math.Exp runs %.0f× slower with dirty upper halves on this CPU", p)
	for _, n := range []int{subBlock, subBlock - 3} {
		src := make([][]float32, 4)
		for i := range src {
			src[i] = make([]float32, n)
			for j := range src[i] {
				src[i][j] = float32(i*j%97) * 0.01
			}
		}
		dst := make([]float32, n)
		refs := [3][]float32{src[1], src[2], src[3]}
		for _, st := range []search.Strategy{StrategyEvolver, search.Rand1Bin, search.CurrentToBest1Bin} {
			k := &kernel{c: &Config{Strategy: st}, f: 0.5}
			r := search.NewRNG(1)
			for _, c := range []struct {
				name string
				run  func()
			}{
				{"dense", func() { k.dense(dst, src[0], refs, r, DenseThreshold(0.5), 5) }},
				{"mutate", func() { k.mutate(dst, src[0], refs) }},
			} {
				if s := avxstate.ExpSlowdown(c.run, reps); s > maxSlowdown {
					t.Errorf("n=%d %s/%s: math.Exp %.1f× slower right after it (limit %d): upper halves left dirty",
						n, st, c.name, s, maxSlowdown)
				}
			}
		}
	}
}
