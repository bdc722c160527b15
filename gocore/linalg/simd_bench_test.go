package linalg

import (
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// BenchmarkLinalgSmall times, at 512×512, the two GEMM shapes of the
// randomized SVD (rank 64 + oversampling 10, so l = 74) and the whole
// RandomizedSVD (rank 64, q = 2): small enough that bench/bench_simd.py can
// time the SIMD build (GOEXPERIMENT=simd) against the plain-Go build in
// seconds. BenchmarkGemm and BenchmarkRandomizedSVD are the same at 1024
// and 4096.
func BenchmarkLinalgSmall(b *testing.B) {
	const n, l = 512, 74
	a := uniformMatrix(2, n, n)
	vt := uniformMatrix(4, l, n).Data
	c := make([]float32, n*l)
	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"Yt=(A*V)t", func() error { timesBasis(parallel.Pool{}, c, a, vt); return nil }},
		{"Zt=Qt*A", func() error { basisTimes(parallel.Pool{}, c, vt, a, nil); return nil }},
		{"RandomizedSVD", func() error {
			_, err := RandomizedSVD(a, Options{Rank: 64, PowerIters: 2, Seed: 1})
			return err
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if err := tc.run(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
