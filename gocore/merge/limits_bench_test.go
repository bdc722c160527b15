package merge

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// limitsMethods are the methods of issue 15's limits table, in the order
// BenchmarkLimits runs them (task_arithmetic, at the memory bound, and
// dare_ties are there for reference).
var limitsMethods = []string{
	"task_arithmetic", "ties", "magnitude_prune", "consensus_ta", "model_stock",
	"dare_ties", "breadcrumbs", "breadcrumbs_ties", "consensus_ties", "neuro",
	"della", "della_linear", "pcb",
}

// triadArrays are BenchmarkLimits' STREAM triad arrays: three of 4× the
// merge's per-model data (256 MiB each at the default size), touched once.
var triadArrays = sync.OnceValue(func() [3][]float32 {
	n := 4 * benchTensors * benchTensorLen
	var a [3][]float32
	for i := range a {
		a[i] = make([]float32, n)
		for j := range a[i] {
			a[i][j] = float32(i)
		}
	}
	return a
})

// triadOnce runs the triad a = b + s·c once over triadArrays on the default
// pool, chunked like the merge kernels (the loop of BenchmarkTriad).
func triadOnce() {
	arr := triadArrays()
	x, y, z := arr[0], arr[1], arr[2]
	n := len(x)
	const s = 0.5
	parallel.Pool{}.For(parallel.NumChunks(n), func(_, c int) {
		lo := c * parallel.Chunk
		hi := min(lo+parallel.Chunk, n)
		a, bb, cc := x[lo:hi], y[lo:hi], z[lo:hi]
		bb, cc = bb[:len(a)], cc[:len(a)]
		for i := range a {
			a[i] = bb[i] + s*cc[i]
		}
	})
}

// BenchmarkLimits pairs every method of limitsMethods with the memory
// bandwidth measured next to it: Limits/rep<r>/<method>/triad_before,
// Limits/rep<r>/<method>/merge and Limits/rep<r>/<method>/triad_after run
// back to back, for r below NPSFUSE_LIMITS_REPEAT (default 1; every method
// once per repetition, unlike -count, which repeats each benchmark in place),
// so that a merge's MB/s (benchBytes: every input read once, the output
// written once) can be divided by the triad's MB/s (12 bytes per element)
// of the same moment. Shape: benchModels models (all of them, unlike
// BenchmarkMerge) of benchTensors tensors of benchTensorLen float32;
// density 0.2, λ = 1, seed 1. bench/bench_merge_limits.py runs it with
// -benchtime 1x and 5 repetitions and writes bench/results/merge_limits.md.
func BenchmarkLimits(b *testing.B) {
	all := benchTensorsFor()
	triad := func(b *testing.B) {
		triadArrays()
		b.SetBytes(int64(12 * 4 * benchTensors * benchTensorLen))
		for b.Loop() {
			triadOnce()
		}
	}
	reps := 1
	if s := os.Getenv("NPSFUSE_LIMITS_REPEAT"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("NPSFUSE_LIMITS_REPEAT=%q: want a positive integer", s)
		}
		reps = n
	}
	for r := range reps {
		b.Run(fmt.Sprintf("rep%d", r), func(b *testing.B) {
			for _, method := range limitsMethods {
				b.Run(method, func(b *testing.B) {
					p := testParams(method)
					p.Density, p.Lambda, p.Seed = 0.2, 1, 1
					b.Run("triad_before", triad)
					b.Run("merge", func(b *testing.B) {
						b.SetBytes(benchBytes(method, len(all[0].Models)))
						for b.Loop() {
							if err := Run(method, p, all); err != nil {
								b.Fatal(err)
							}
						}
					})
					b.Run("triad_after", triad)
				})
			}
		})
	}
}
