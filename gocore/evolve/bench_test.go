package evolve

import (
	"fmt"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// BenchmarkOffspring makes one trial over 16M float32 elements (64 MB per
// buffer, beyond any cache). Bytes per op count the minimum traffic: every
// source element read once and the offspring written once (for sparse CR,
// the parent read and the offspring written). When the vector loops are
// available, the ".../scalar" runs switch them off (the plain Go path).
func BenchmarkOffspring(b *testing.B) { benchOffspring(b, 1<<24, true) }

// benchOffspring runs the offspring benchmark cases over n elements, and
// with scalar also each case with the vector loops switched off.
func benchOffspring(b *testing.B, n int, scalar bool) {
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
		for _, vector := range []bool{true, false} {
			if !vector && (!scalar || !accelerated) {
				continue
			}
			name := fmt.Sprintf("%s/%s/CR=%g", c.s, c.g, c.cr)
			if !vector {
				name += "/scalar"
			}
			b.Run(name, func(b *testing.B) {
				defer setAccelerated(vector)()
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

// BenchmarkTriad is the STREAM triad a[j] = b[j] + s·c[j] over 16M float32
// elements on parallel.Chunk pieces, the yardstick for BenchmarkOffspring
// (same accounting: 12 bytes per element, two reads and one write).
func BenchmarkTriad(b *testing.B) {
	const n = 1 << 24
	x, y, z := make([]float32, n), make([]float32, n), make([]float32, n)
	for j := range x {
		x[j], y[j], z[j] = 0, 1, 2
	}
	const s = 0.5
	b.SetBytes(12 * n)
	for b.Loop() {
		parallel.Pool{}.For(parallel.NumChunks(n), func(_, c int) {
			lo := c * parallel.Chunk
			hi := min(lo+parallel.Chunk, n)
			a, bb, cc := x[lo:hi], y[lo:hi], z[lo:hi]
			bb, cc = bb[:len(a)], cc[:len(a)]
			for j := range a {
				a[j] = bb[j] + s*cc[j]
			}
		})
	}
}

// BenchmarkDense runs the dense element step (vector loop when accelerated)
// on one L1-resident sub-block, per strategy. Bytes per op = 4 bytes per
// element per source and for the output.
func BenchmarkDense(b *testing.B) {
	const n = subBlock
	src := make([][]float32, 4)
	for i := range src {
		src[i] = make([]float32, n)
		for j := range src[i] {
			src[i][j] = float32(i*j%97) * 0.01
		}
	}
	dst := make([]float32, n)
	for _, c := range []struct {
		st      search.Strategy
		sources int
	}{{StrategyEvolver, 2}, {search.Rand1Bin, 4}, {search.CurrentToBest1Bin, 4}} {
		k := &kernel{c: &Config{Strategy: c.st}, f: 0.5}
		refs := [3][]float32{src[1], src[2], src[3]}
		b.Run(string(c.st)+"/dense", func(b *testing.B) {
			r := search.NewRNG(1)
			b.SetBytes(int64(4 * n * (c.sources + 1)))
			for b.Loop() {
				k.dense(dst, src[0], refs, r, DenseThreshold(0.5), 5)
			}
		})
		b.Run(string(c.st)+"/denseGo", func(b *testing.B) {
			r := search.NewRNG(1)
			b.SetBytes(int64(4 * n * (c.sources + 1)))
			for b.Loop() {
				k.denseGo(dst, src[0], refs, r, DenseThreshold(0.5), 5)
			}
		})
	}
	// The mask words alone: RNG.Uint64 calls against drawWords (inlined steps).
	w := make([]uint64, n/4)
	b.Run("Uint64", func(b *testing.B) {
		r := search.NewRNG(1)
		b.SetBytes(n * 12)
		for b.Loop() {
			for i := range w {
				w[i] = r.Uint64()
			}
		}
	})
	b.Run("drawWords", func(b *testing.B) {
		r := search.NewRNG(1)
		b.SetBytes(n * 12)
		for b.Loop() {
			drawWords(w, r)
		}
	})
}
