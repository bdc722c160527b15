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
