package merge

import (
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// benchTensorsBF16 is BenchmarkMerge's data rounded to bfloat16 (inputs
// and output), the dtype of most Hugging Face checkpoints.
func benchTensorsBF16() []Tensor {
	f := benchTensorsFor()
	conv := func(v tensor.Vec) tensor.Vec {
		u := make([]uint16, len(v.F32))
		for j, x := range v.F32 {
			u[j] = tensor.BF16Bits(x)
		}
		return tensor.Vec{DType: tensor.BF16, U16: u}
	}
	for i := range f {
		f[i].Base, f[i].Out = conv(f[i].Base), conv(f[i].Out)
		for m := range f[i].Models {
			f[i].Models[m] = conv(f[i].Models[m])
		}
	}
	return f
}

// BenchmarkMergeBF16 times Run on bfloat16 inputs and output for the
// methods of the one-pass family and task_arithmetic (the memory-bound
// reference); compare with BenchmarkMerge's float32 figures. Density 0.2,
// and 0.5 (ties_d0.5: bench_cli's setting, where the cut falls among many
// equal magnitudes: bfloat16 differences are coarse).
func BenchmarkMergeBF16(b *testing.B) {
	all := benchTensorsBF16()
	for _, c := range []struct {
		name, method string
		density      float64
	}{
		{"task_arithmetic", "task_arithmetic", 0.2}, {"ties", "ties", 0.2}, {"ties_d0.5", "ties", 0.5},
		{"breadcrumbs", "breadcrumbs", 0.2}, {"dare_ties", "dare_ties", 0.2},
	} {
		method := c.method
		b.Run(c.name, func(b *testing.B) {
			p := testParams(method)
			p.Density, p.Lambda, p.Seed = c.density, 1, 1
			b.SetBytes(benchBytes(method, len(all[0].Models)) / 2)
			if err := Run(method, p, all); err != nil {
				b.Fatal(err)
			}
			c0 := cpuTime()
			for b.Loop() {
				if err := Run(method, p, all); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-c0)/1e6/float64(b.N), "cpu-ms/op")
		})
	}
}
