package search

import (
	"fmt"
	"testing"
)

func BenchmarkCMAESGeneration(b *testing.B) {
	for _, n := range []int{8, 16, 64, 256} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			e, _ := NewCMAES(CMAESOptions{X0: fill(n, 1), Sigma0: 0.5, Minimize: true, Seed: 1})
			fs := make([]float64, e.Popsize())
			for b.Loop() {
				for k, x := range e.Ask() {
					fs[k] = sphere(x)
				}
				if err := e.Tell(fs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDEGeneration(b *testing.B) {
	for _, n := range []int{8, 64} {
		b.Run(fmt.Sprintf("n=%d_NP=%d", n, 10*n), func(b *testing.B) {
			lo, hi := box(n, -5, 5)
			d, _ := NewDE(DEOptions{Lo: lo, Hi: hi, Minimize: true, Seed: 1})
			fs := make([]float64, d.Popsize())
			for b.Loop() {
				for k, x := range d.Ask() {
					fs[k] = sphere(x)
				}
				if err := d.Tell(fs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

const benchLen = 1 << 20

func BenchmarkDiffMutateFloat32(b *testing.B) {
	dst, base, x, y := make([]float32, benchLen), make([]float32, benchLen), make([]float32, benchLen), make([]float32, benchLen)
	b.SetBytes(4 * benchLen * 4)
	for b.Loop() {
		DiffMutate(dst, base, x, y, 0.5)
	}
}

func BenchmarkBinomialMask(b *testing.B) {
	mask := make([]bool, benchLen)
	r := NewRNG(1)
	b.SetBytes(benchLen)
	for b.Loop() {
		BinomialMask(mask, 0.5, true, r)
	}
}

func BenchmarkCrossoverFloat32(b *testing.B) {
	dst, x, y := make([]float32, benchLen), make([]float32, benchLen), make([]float32, benchLen)
	mask := make([]bool, benchLen)
	BinomialMask(mask, 0.5, true, NewRNG(2))
	b.SetBytes(3 * 4 * benchLen)
	for b.Loop() {
		Crossover(dst, x, y, mask)
	}
}
