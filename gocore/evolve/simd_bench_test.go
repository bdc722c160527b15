package evolve

import "testing"

// BenchmarkOffspringSmall is BenchmarkOffspring on 1M elements and without
// the ".../scalar" runs: the kernels as each build runs them, small enough
// that bench/bench_simd.py can time the SIMD build (GOEXPERIMENT=simd)
// against the plain-Go build in seconds.
func BenchmarkOffspringSmall(b *testing.B) { benchOffspring(b, 1<<20, false) }
