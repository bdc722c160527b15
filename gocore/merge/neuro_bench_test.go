package merge

import (
	"math/rand/v2"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// BenchmarkNeuro4096 times NeuroMerging of T = 3 fine-tunes of one
// 4096 × 4096 layer (defaults: mask_rate 0.9, global scope, automatic λ₂).
func BenchmarkNeuro4096(b *testing.B) {
	const n, T = 4096, 3
	r := rand.New(rand.NewPCG(1, 2))
	base := make([]float32, n*n)
	for i := range base {
		base[i] = float32(r.NormFloat64())
	}
	ts := []Tensor{{Name: "w", Shape: []int{n, n}, Base: tensor.FromF32(base), Out: tensor.FromF32(make([]float32, n*n))}}
	for range T {
		x := make([]float32, n*n)
		for i := range x {
			x[i] = base[i] + float32(0.01*r.NormFloat64())
		}
		ts[0].Models = append(ts[0].Models, tensor.FromF32(x))
	}
	p := DefaultParams("neuro")
	b.SetBytes(int64((T + 2) * 4 * n * n))
	for b.Loop() {
		if err := Run("neuro", p, ts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNeuroCPU runs neuro on BenchmarkMerge's data (its defaults, λ =
// 1) and reports, beside ns/op, the process's CPU time per merge
// (cpu-ms/op, as BenchmarkDellaCPU): steadier than the wall time on a
// shared machine.
func BenchmarkNeuroCPU(b *testing.B) {
	all := benchTensorsFor()
	p := testParams("neuro")
	p.Density, p.Lambda, p.Seed = 0.2, 1, 1
	b.SetBytes(benchBytes("neuro", len(all[0].Models)))
	start := cpuTime()
	for b.Loop() {
		if err := Run("neuro", p, all); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-start)/1e6/float64(b.N), "cpu-ms/op")
}
