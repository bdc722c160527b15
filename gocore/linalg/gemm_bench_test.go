package linalg

import (
	"fmt"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// BenchmarkGemmKernels times the two big products of RandomizedSVD (rank
// 64 + oversampling 10, so l = 74) at n×n for each kernel this build and
// CPU run: Yᵀ = (A·V)ᵀ (A row-major) and Zᵀ = Qᵀ·A (A read transposed).
func BenchmarkGemmKernels(b *testing.B) {
	const l = 74
	ks := append(fmaKernels(), portableKernel())
	for _, n := range []int{1024, 2048} {
		a := uniformMatrix(2, n, n)
		vt := uniformMatrix(4, l, n).Data
		c := make([]float32, n*l)
		for _, kern := range ks {
			for _, tc := range []struct {
				name string
				run  func()
			}{
				{"Yt", func() {
					gemmWith(parallel.Pool{}, kern, n, l, n, operand{data: a.Data, ld: n}, operand{data: vt, ld: n, trans: true}, 0, operand{data: c, ld: n, trans: true})
				}},
				{"Zt", func() {
					gemmWith(parallel.Pool{}, kern, n, l, n, operand{data: a.Data, ld: n, trans: true}, operand{data: vt, ld: n, trans: true}, 0, operand{data: c, ld: n, trans: true})
				}},
			} {
				b.Run(fmt.Sprintf("%d/%s/%s", n, tc.name, kern.name), func(b *testing.B) {
					for b.Loop() {
						tc.run()
					}
					b.ReportMetric(2*float64(n)*float64(n)*l*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				})
			}
		}
	}
}

// BenchmarkRSVDShapes times RandomizedSVD (rank 64, oversampling 10, q = 2,
// 2 threads, and 1 thread at 1024²) on uniform [−1, 1) matrices of the
// shapes bench/bench_rsvd.py compares with torch.svd_lowrank.
func BenchmarkRSVDShapes(b *testing.B) {
	for _, sh := range []struct {
		m, n, threads int
		suffix        string
	}{{768, 768, 2, ""}, {1024, 1024, 2, ""}, {2048, 2048, 2, ""}, {3072, 768, 2, ""}, {1024, 1024, 1, "_1thread"}} {
		b.Run(fmt.Sprintf("%dx%d%s", sh.m, sh.n, sh.suffix), func(b *testing.B) {
			a := uniformMatrix(1, sh.m, sh.n)
			opt := Options{Rank: 64, Oversample: 10, PowerIters: 2, Seed: 1, Pool: parallel.Pool{Threads: sh.threads}}
			for b.Loop() {
				if _, err := RandomizedSVD(a, opt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFMAPeak runs the register-only FMA loop of the widest assembly
// kernel on every thread of the pool: the CPU's FMA throughput as this
// process sees it, the peak the GEMM figures are compared with.
func BenchmarkFMAPeak(b *testing.B) {
	if fmaPeakFlops() == 0 {
		b.Skip("no assembly FMA kernels in this build or on this CPU")
	}
	const iters = 1 << 20
	pool := parallel.Pool{}
	threads := pool.Size()
	for b.Loop() {
		pool.For(threads, func(_, _ int) { fmaPeak(iters) })
	}
	flops := fmaPeakFlops() * iters * float64(threads) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	b.ReportMetric(float64(threads), "threads")
}
