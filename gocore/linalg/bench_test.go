package linalg

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// uniformMatrix returns an m×n matrix of uniform [-1, 1) entries (its content
// does not affect the timings).
func uniformMatrix(seed uint64, m, n int) Matrix {
	rng := rand.New(rand.NewPCG(seed, 1))
	a := NewMatrix(m, n)
	for i := range a.Data {
		a.Data[i] = 2*rng.Float32() - 1
	}
	return a
}

// BenchmarkRandomizedSVD: square n×n, rank 64, p = 10, q = 2. Measure the
// 4096 case with -benchtime=1x.
func BenchmarkRandomizedSVD(b *testing.B) {
	for _, n := range []int{1024, 4096} {
		b.Run(fmt.Sprintf("%dx%d_rank64_q2", n, n), func(b *testing.B) {
			a := uniformMatrix(1, n, n)
			opt := Options{Rank: 64, PowerIters: 2, Seed: 1}
			b.ResetTimer()
			for b.Loop() {
				if _, err := RandomizedSVD(a, opt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSgemm measures gonum blas32 Sgemm for the 4096×4096 by 4096×74
// products of RandomizedSVD (rank 64 + oversampling 10) in the two shapes it
// uses, and in the plain column layout for comparison.
func BenchmarkSgemm(b *testing.B) {
	const n, l = 4096, 74
	a := uniformMatrix(2, n, n).Data
	x := uniformMatrix(3, n, l).Data  // n×l, one vector per column
	xt := uniformMatrix(4, l, n).Data // l×n, one vector per row
	c := make([]float32, n*l)
	impl := blas32.Implementation()
	cases := []struct {
		name string
		run  func()
	}{
		{"Yt=Xt*At(NoTrans,Trans)", func() { impl.Sgemm(blas.NoTrans, blas.Trans, l, n, n, 1, xt, n, a, n, 0, c, n) }},
		{"Zt=Xt*A(NoTrans,NoTrans)", func() { impl.Sgemm(blas.NoTrans, blas.NoTrans, l, n, n, 1, xt, n, a, n, 0, c, n) }},
		{"Y=A*X(NoTrans,NoTrans)", func() { impl.Sgemm(blas.NoTrans, blas.NoTrans, n, l, n, 1, a, n, x, l, 0, c, l) }},
		{"Z=At*X(Trans,NoTrans)", func() { impl.Sgemm(blas.Trans, blas.NoTrans, n, l, n, 1, a, n, x, l, 0, c, l) }},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				tc.run()
			}
			b.ReportMetric(2*float64(n)*n*l*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

// BenchmarkApplyWeighted: dst (4096×4096) = w·dst + U·diag(c)·Vt, r = 64.
func BenchmarkApplyWeighted(b *testing.B) {
	const n, r = 4096, 64
	u := uniformMatrix(5, n, r)
	vt := uniformMatrix(6, r, n)
	coef := uniformMatrix(7, 1, r).Data
	dst := uniformMatrix(8, n, n).Data
	b.ResetTimer()
	for b.Loop() {
		if err := ApplyWeighted(parallel.Pool{}, dst, u, coef, vt, 0.5); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(2*float64(n)*n*r*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkOrthonormalizeRows: Householder LQ of a 74×4096 panel.
func BenchmarkOrthonormalizeRows(b *testing.B) {
	a := uniformMatrix(9, 74, 4096)
	var h householder
	buf := make([]float32, len(a.Data))
	for b.Loop() {
		copy(buf, a.Data)
		h.orthoRows(buf, a.Rows, a.Cols)
	}
}

// BenchmarkGemm compares this package's GEMM with gonum's blas32 Sgemm on
// the two big products of RandomizedSVD (rank 64 + oversampling 10, so
// l = 74) for n×n inputs: Yᵀ = (A·V)ᵀ and Zᵀ = Qᵀ·A.
func BenchmarkGemm(b *testing.B) {
	const l = 74
	for _, n := range []int{1024, 4096} {
		a := uniformMatrix(2, n, n)
		vt := uniformMatrix(4, l, n).Data
		c := make([]float32, n*l)
		impl := blas32.Implementation()
		cases := []struct {
			name string
			run  func()
		}{
			{"Yt=(A*V)t/gemm", func() { timesBasis(parallel.Pool{}, c, a, vt) }},
			{"Yt=(A*V)t/gonum", func() { impl.Sgemm(blas.NoTrans, blas.Trans, l, n, n, 1, vt, n, a.Data, n, 0, c, n) }},
			{"Zt=Qt*A/gemm", func() { basisTimes(parallel.Pool{}, c, vt, a, nil) }},
			{"Zt=Qt*A/gonum", func() { impl.Sgemm(blas.NoTrans, blas.NoTrans, l, n, n, 1, vt, n, a.Data, n, 0, c, n) }},
		}
		for _, tc := range cases {
			b.Run(fmt.Sprintf("%d/%s", n, tc.name), func(b *testing.B) {
				for b.Loop() {
					tc.run()
				}
				b.ReportMetric(2*float64(n)*float64(n)*l*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
