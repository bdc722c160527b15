package nps

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/linalg"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// benchDecomposition decomposes nMat random dim×dim matrices into 8 SVD
// subspaces (rank 64).
func benchDecomposition(b *testing.B, nMat, dim int) *Decomposition {
	b.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	in := make([]Input, nMat)
	for i := range in {
		in[i] = Input{Name: fmt.Sprint("m", i), Shape: []int{dim, dim}, Tau: randn(r, dim*dim)}
	}
	d, err := Decompose(in, Options{Subspaces: 8, Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkBuild: one NPS candidate (τ' for every matrix, global top-10 %)
// of 4 matrices of 2048×2048 (16.8M parameters, rank 64), and its parts:
// the reweighting (copy + GEMM) and the prune (radix select + mask).
func BenchmarkBuild(b *testing.B) {
	const nMat, dim = 4, 2048
	d := benchDecomposition(b, nMat, dim)
	out := outBufs(d)
	w := Weights{Shared: []float64{1.9, 1.7, 1.5, 1.3, 1.1, 0.9, 0.7, 0.5}}
	flops := 2 * float64(nMat) * dim * dim * 64
	b.Run("all", func(b *testing.B) {
		for b.Loop() {
			if _, err := d.Build(w, 0.1, true, out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reweight", func(b *testing.B) {
		for b.Loop() {
			for i := range d.tensors {
				if err := d.tensors[i].reweight(parallel.Pool{}, w.Shared, out[i]); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	})
	b.Run("prune", func(b *testing.B) {
		work := outBufs(d)
		for b.Loop() {
			b.StopTimer()
			for i := range out {
				copy(work[i], out[i])
			}
			b.StartTimer()
			prune(parallel.Pool{}, work, 0.1, true)
		}
	})
	b.Run("magnitude", func(b *testing.B) {
		r := rand.New(rand.NewPCG(3, 4))
		dm, err := Decompose([]Input{{Name: "v", Shape: []int{nMat * dim * dim}, Tau: randn(r, nMat*dim*dim)}},
			Options{Subspaces: 8, Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		o := outBufs(dm)
		ws := Weights{Shared: slices.Clone(w.Shared)}
		for b.Loop() {
			if _, err := dm.Build(ws, 0.1, true, o); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLowRank is the low-rank update of the candidate build,
// dst += U·diag(c)·Vᵀ for a 2048² matrix of rank 64 (linalg.ApplyWeighted,
// beta = 1).
func BenchmarkLowRank(b *testing.B) {
	const n, r = 2048, 64
	rng := rand.New(rand.NewPCG(5, 6))
	u := linalg.Matrix{Rows: n, Cols: r, Data: randn(rng, n*r)}
	vt := linalg.Matrix{Rows: r, Cols: n, Data: randn(rng, r*n)}
	coef := randn(rng, r)
	dst := randn(rng, n*n)
	flops := 2.0 * n * n * r
	for b.Loop() {
		if err := linalg.ApplyWeighted(parallel.Pool{}, dst, u, coef, vt, 1); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}
