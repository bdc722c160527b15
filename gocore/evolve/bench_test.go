package evolve

import (
	"fmt"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// BenchmarkOffspring makes one trial over 16M float32 elements (64 MB per
// buffer, beyond any cache). Bytes per op count the minimum traffic: every
// source element read once and the offspring written once (for sparse CR,
// the parent read and the offspring written).
func BenchmarkOffspring(b *testing.B) {
	const n = 1 << 24
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

// BenchmarkDenseMask compares, on one L1-resident piece, the dense element
// crossover (selectDense: 16-bit lanes, branch-free) with the same job done
// by search.BinomialMask and search.Crossover (one Float64 and two
// data-dependent branches per element). Bytes per op = elements.
func BenchmarkDenseMask(b *testing.B) {
	const n = subBlock
	xi, dst := make([]float32, n), make([]float32, n)
	mask := make([]bool, n)
	for j := range xi {
		xi[j] = float32(j)
	}
	for _, cr := range []float64{0.5, 0.9} {
		b.Run(fmt.Sprintf("selectDense/CR=%g", cr), func(b *testing.B) {
			r := search.NewRNG(1)
			b.SetBytes(n)
			for b.Loop() {
				selectDense(dst, xi, r, DenseThreshold(cr), -1)
			}
		})
		b.Run(fmt.Sprintf("BinomialMask+Crossover/CR=%g", cr), func(b *testing.B) {
			r := search.NewRNG(1)
			b.SetBytes(n)
			for b.Loop() {
				search.BinomialMask(mask, cr, false, r)
				search.Crossover(dst, xi, dst, mask)
			}
		})
	}
}
