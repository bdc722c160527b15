//go:build goexperiment.simd && amd64

package linalg

import (
	"math/rand/v2"
	"slices"
	"testing"

	"simd/archsimd"
)

// TestRotationKernelsMatchGo: the vector rotation kernels give rotGo's
// bits (no fused multiply-add), for every tail length.
func TestRotationKernelsMatchGo(t *testing.T) {
	kernels := map[string]func(x, y []float64, c, s float64){}
	if archsimd.X86.AVX512() {
		kernels["avx512"] = rot512
	}
	if archsimd.X86.AVX2() {
		kernels["avx2"] = rot256
	}
	if len(kernels) == 0 {
		t.Skip("no vector kernels on this CPU")
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for name, k := range kernels {
		for n := 0; n < 40; n++ {
			x, y := make([]float64, n), make([]float64, n)
			for i := range x {
				x[i], y[i] = rng.NormFloat64(), rng.NormFloat64()
			}
			c, s := 0.6+0.01*rng.Float64(), -0.8+0.01*rng.Float64()
			wx, wy := slices.Clone(x), slices.Clone(y)
			rotGo(wx, wy, c, s)
			k(x, y, c, s)
			if !slices.Equal(x, wx) || !slices.Equal(y, wy) {
				t.Fatalf("%s n=%d: differs from rotGo", name, n)
			}
		}
	}
}

// TestRank4KernelsMatchGo: the vector rank-4 update kernels give rank4Go's
// bits, for every tail length.
func TestRank4KernelsMatchGo(t *testing.T) {
	kernels := map[string]func(g []float64, x *[4][]float64, a *[4]float64){}
	if archsimd.X86.AVX512() {
		kernels["avx512"] = rank4x512
	}
	if archsimd.X86.AVX2() {
		kernels["avx2"] = rank4x256
	}
	if len(kernels) == 0 {
		t.Skip("no vector kernels on this CPU")
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for name, k := range kernels {
		for n := 0; n < 40; n++ {
			g := make([]float64, n)
			var x [4][]float64
			for q := range x {
				x[q] = make([]float64, n)
				for i := range x[q] {
					x[q][i] = rng.NormFloat64()
				}
			}
			for i := range g {
				g[i] = rng.NormFloat64()
			}
			a := [4]float64{rng.NormFloat64(), rng.NormFloat64(), 0, rng.NormFloat64()}
			want := slices.Clone(g)
			rank4Go(want, &x, &a)
			k(g, &x, &a)
			if !slices.Equal(g, want) {
				t.Fatalf("%s n=%d: differs from rank4Go", name, n)
			}
		}
	}
}
