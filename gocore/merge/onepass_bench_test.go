package merge

import "testing"

// BenchmarkOnePassCPU times the one-pass TIES family on BenchmarkMerge's
// data (all benchModels models, density 0.2) and reports, next to the wall
// time, the CPU time per merge of the whole process (cpu-ms/op): on a
// shared machine the wall time moves with the other processes' load, the
// CPU time much less.
func BenchmarkOnePassCPU(b *testing.B) {
	all := benchTensorsFor()
	for _, method := range onePassMethods {
		b.Run(method, func(b *testing.B) {
			p := testParams(method)
			p.Density, p.Lambda, p.Seed = 0.2, 1, 1
			if err := Run(method, p, all); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(benchBytes(method, len(all[0].Models)))
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
