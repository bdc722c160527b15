package merge

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Shape of BenchmarkMergeSmall: smallModels models of smallTensors tensors
// of smallRows×smallCols float32 entries (512K parameters per model; few
// rows, so that the methods built on SVDs take no longer than the others).
const (
	smallModels  = 4
	smallTensors = 2
	smallRows    = 64
	smallCols    = 4096
)

// smallData is BenchmarkMergeSmall's input, generated once per test binary
// like benchData: base entries N(0, 1), fine-tunes the base plus N(0, 0.01²).
var smallData = sync.OnceValue(func() (d struct {
	base   [][]float32
	models [][][]float32
}) {
	r := rand.New(rand.NewPCG(3, 4))
	n := smallRows * smallCols
	d.base = make([][]float32, smallTensors)
	for ti := range d.base {
		d.base[ti] = make([]float32, n)
		for j := range d.base[ti] {
			d.base[ti][j] = float32(r.NormFloat64())
		}
	}
	d.models = make([][][]float32, smallModels)
	for m := range d.models {
		d.models[m] = make([][]float32, smallTensors)
		for ti := range d.models[m] {
			x := make([]float32, n)
			for j := range x {
				x[j] = d.base[ti][j] + float32(0.01*r.NormFloat64())
			}
			d.models[m][ti] = x
		}
	}
	return d
})

// BenchmarkMergeSmall times Run for every registered method (slerp on the
// first two models) with DefaultParams, density 0.2 and λ = 1, on 512K
// parameters per model: small enough that bench/bench_simd.py can time
// every method in the SIMD build (GOEXPERIMENT=simd) against the plain-Go
// build in a few minutes. BenchmarkMerge is the same at 16M.
func BenchmarkMergeSmall(b *testing.B) {
	d := smallData()
	for _, method := range Methods() {
		b.Run(method, func(b *testing.B) {
			models := smallModels
			if n := modelsFor(method); n < 3 { // slerp, nearswap
				models = n
			}
			ts := make([]Tensor, smallTensors)
			for ti := range ts {
				out := make([]float32, smallRows*smallCols)
				for j := range out {
					out[j] = 1 // touched: page faults stay out of the timing
				}
				ts[ti] = Tensor{Name: "layer" + string(rune('0'+ti)) + ".weight", Shape: []int{smallRows, smallCols},
					Base: tensor.FromF32(d.base[ti]), Out: tensor.FromF32(out)}
				for m := range models {
					ts[ti].Models = append(ts[ti].Models, tensor.FromF32(d.models[m][ti]))
				}
			}
			p := testParams(method)
			p.Density, p.Lambda, p.Seed = 0.2, 1, 1
			b.SetBytes(int64((models + 1) * 4 * smallTensors * smallRows * smallCols))
			// No untimed first run: the slowest methods take a second.
			for b.Loop() {
				if err := Run(method, p, ts); err != nil {
					b.Skipf("%s on %d×%d×%d float32: %v", method, smallTensors, smallRows, smallCols, err)
				}
			}
		})
	}
}
