package evolve

import (
	"fmt"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// BenchmarkOffspringSmall is BenchmarkOffspring on 1M elements and without
// the ".../scalar" runs: the kernels as each build runs them, small enough
// that bench/bench_simd.py can time the SIMD build (GOEXPERIMENT=simd)
// against the plain-Go build in seconds.
func BenchmarkOffspringSmall(b *testing.B) {
	const n = 1 << 20
	pop := make([]tensor.Vec, 4)
	for i := range pop {
		x := make([]float32, n)
		for j := range x {
			x[j] = float32(i*j%97) * 0.01
		}
		pop[i] = tensor.FromF32(x)
	}
	out := tensor.Alloc(n, tensor.F32)
	for _, c := range []struct {
		s       search.Strategy
		g       Granularity
		cr      float64
		sources int
	}{
		{StrategyEvolver, Element, 0.5, 2},
		{StrategyEvolver, Element, 1e-5, 1},
		{StrategyEvolver, Block, 0.5, 2},
		{search.Rand1Bin, Element, 0.9, 4},
		{search.CurrentToBest1Bin, Element, 0.9, 4},
		{search.Rand1Bin, Tensor, 0.5, 4},
	} {
		b.Run(fmt.Sprintf("%s/%s/CR=%g", c.s, c.g, c.cr), func(b *testing.B) {
			cfg := Config{Strategy: c.s, Schedule: search.ScheduleSpec{Kind: "constant", F: 0.5, CR: c.cr},
				Granularity: c.g, BlockSize: 4096, Segments: []int{0, n / 4, n / 2, n}, Generations: 10, ForceIndex: true}
			tr, err := cfg.Plan(0, 0, []float64{1, 2, 3, 4}, n)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(4 * n * (c.sources + 1)))
			for b.Loop() {
				if _, err := Offspring(out, pop, &cfg, &tr); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
