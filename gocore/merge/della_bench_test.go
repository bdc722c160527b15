package merge

import (
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/npsfuse/npsfuse/gocore/rng"
)

// BenchmarkDellaRow times DELLA's keep decision (rowBits) on rows of 2048
// entries drawn like a fine-tune's task vector, N(0, 0.01²), with density
// 0.2 and ε 0.15 (BenchmarkLimits' setting); ns/op and cpu-ns/op (the
// process's CPU time, steadier on a shared machine) are per row.
func BenchmarkDellaRow(b *testing.B) {
	const n, rows = 2048, 64
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, n*rows)
	for i := range x {
		x[i] = float32(0.01 * r.NormFloat64())
	}
	sc := dellaPool(n)
	thr := sc.thresholds(n, float32(0.2-0.15), 2*float32(0.15))
	key := rng.Key(1, "w", 0)
	b.SetBytes(4 * n)
	i := 0
	start := cpuTime()
	for b.Loop() {
		row := i % rows
		sc.rowBits(x[row*n:(row+1)*n], key, uint64(row*n), thr, sc.words)
		i++
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkDellaCPU runs della and della_linear on BenchmarkMerge's data
// and reports, beside ns/op, the process's CPU time per merge (cpu-ms/op,
// user + system from getrusage): on a machine shared with other jobs it
// varies less than the wall time, which waits for a free core.
func BenchmarkDellaCPU(b *testing.B) {
	all := benchTensorsFor()
	for _, method := range []string{"della", "della_linear"} {
		b.Run(method, func(b *testing.B) {
			p := testParams(method)
			p.Density, p.Lambda, p.Seed = 0.2, 1, 1
			b.SetBytes(benchBytes(method, len(all[0].Models)))
			start := cpuTime()
			for b.Loop() {
				if err := Run(method, p, all); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-start)/1e6/float64(b.N), "cpu-ms/op")
		})
	}
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
