package merge

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Benchmark shape: benchModels fine-tuned models of benchTensors tensors of
// benchTensorLen float32 entries each (by default 4Mi: 16M parameters per
// model, 384 MiB of inputs and output in all). Profile a method with
//
//	go test -run XXX -bench 'Merge/^ties$' -cpuprofile cpu.out ./gocore/merge
//	go tool pprof -top merge.test cpu.out
const (
	benchModels  = 4
	benchTensors = 4
)

// benchTensorLen is the entries of each benchmark tensor:
// NPSFUSE_BENCH_TENSOR_LEN (a positive multiple of 2048, the rows' length),
// 4Mi without it. bench_merge_limits.py --tensor-len sets it to run issue
// 15's shape (4 × 100M parameters), beyond any cache.
var benchTensorLen = func() int {
	s := os.Getenv("NPSFUSE_BENCH_TENSOR_LEN")
	if s == "" {
		return 4 << 20
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 || n%2048 != 0 {
		panic(fmt.Sprintf("NPSFUSE_BENCH_TENSOR_LEN=%q: want a positive multiple of 2048", s))
	}
	return n
}()

// benchData is generated once per test binary and shared by every benchmark:
// base entries are N(0, 1), fine-tuned entries the base plus N(0, 0.01²), so
// task vectors are small and dense like real fine-tunes.
var benchData = sync.OnceValue(func() (d struct {
	base   [][]float32
	models [][][]float32
}) {
	r := rand.New(rand.NewPCG(1, 2))
	d.base = make([][]float32, benchTensors)
	d.models = make([][][]float32, benchModels)
	for ti := range d.base {
		d.base[ti] = make([]float32, benchTensorLen)
		for j := range d.base[ti] {
			d.base[ti][j] = float32(r.NormFloat64())
		}
	}
	for m := range d.models {
		d.models[m] = make([][]float32, benchTensors)
		for ti := range d.models[m] {
			x := make([]float32, benchTensorLen)
			for j := range x {
				x[j] = d.base[ti][j] + float32(0.01*r.NormFloat64())
			}
			d.models[m][ti] = x
		}
	}
	return d
})

// benchTensorsFor wraps the shared data as merge inputs with fresh outputs
// (allocated and touched once, so page faults stay out of the timing).
func benchTensorsFor() []Tensor {
	d := benchData()
	ts := make([]Tensor, benchTensors)
	names := []string{"layer0.weight", "layer1.weight", "layer2.weight", "layer3.weight"}
	for ti := range ts {
		out := make([]float32, benchTensorLen)
		for j := range out {
			out[j] = 1
		}
		ts[ti] = Tensor{Name: names[ti%len(names)], Shape: []int{2048, benchTensorLen / 2048},
			Base: tensor.FromF32(d.base[ti]), Out: tensor.FromF32(out)}
		for m := range benchModels {
			ts[ti].Models = append(ts[ti].Models, tensor.FromF32(d.models[m][ti]))
		}
	}
	return ts
}

// benchBytes is the least memory traffic of a merge of T models: every
// input read once and the output written once (linear does not need the
// base).
func benchBytes(method string, T int) int64 {
	arrays := int64(T + 2)
	if method == "linear" {
		arrays--
	}
	return arrays * 4 * benchTensors * int64(benchTensorLen)
}

// BenchmarkMerge times Run for every registered method (TIES also with
// ScopeGlobal) with DefaultParams, density 0.2 and λ = 1; slerp merges the
// first two models. The reported MB/s counts the bytes of benchBytes;
// compare it with BenchmarkTriad, the machine's memory bandwidth measured
// the same way in the same run. A method that rejects this input (e.g. one
// that needs 2-D tensors) is skipped with its error.
func BenchmarkMerge(b *testing.B) {
	type config struct {
		name, method string
		global       bool
	}
	var cfgs []config
	for _, m := range Methods() {
		cfgs = append(cfgs, config{m, m, false})
	}
	cfgs = append(cfgs, config{"ties_global", "ties", true})
	all := benchTensorsFor()
	for _, c := range cfgs {
		b.Run(c.name, func(b *testing.B) {
			ts := all
			if n := modelsFor(c.method); n < len(all[0].Models) {
				ts = slices.Clone(all)
				for i := range ts {
					ts[i].Models = ts[i].Models[:n]
				}
			}
			p := testParams(c.method)
			p.Density, p.Lambda, p.Seed = 0.2, 1, 1
			if c.global {
				p.Scope = ScopeGlobal
			}
			if err := Run(c.method, p, ts); err != nil {
				b.Skipf("%s on %d×%d float32: %v", c.method, benchTensors, benchTensorLen, err)
			}
			b.SetBytes(benchBytes(c.method, len(ts[0].Models)))
			for b.Loop() {
				if err := Run(c.method, p, ts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSlerp times slerp of the first two models.
func BenchmarkSlerp(b *testing.B) {
	ts := benchTensorsFor()
	for i := range ts {
		ts[i].Models = ts[i].Models[:2]
	}
	b.SetBytes(int64(3 * 4 * benchTensors * benchTensorLen))
	for b.Loop() {
		if err := Run("slerp", DefaultParams("slerp"), ts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTriad is the STREAM triad a[i] = b[i] + s·c[i] over three arrays
// as large as the merge's per-model data summed over tensors, split into
// parallel.Chunk pieces on the default pool's goroutines like the merge
// kernels. Its MB/s (12 bytes per element) is the bandwidth the merge's
// MB/s is measured against.
func BenchmarkTriad(b *testing.B) {
	n := 4 * benchTensors * benchTensorLen // 256 MiB per array by default (4 × the merge's per-model data)
	x, y, z := make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range x {
		x[i], y[i], z[i] = 0, 1, 2
	}
	const s = 0.5
	b.SetBytes(int64(12 * n))
	for b.Loop() {
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
}
