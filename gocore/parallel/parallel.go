// Package parallel runs the kernels' loops over fixed-size chunks on a
// bounded number of goroutines.
//
// Results never depend on the thread count: work is split into chunks whose
// boundaries depend only on the data size (Chunk elements), every chunk is
// computed the same way whichever goroutine takes it, and reductions are
// combined in chunk order by the caller, never in completion order.
package parallel

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Chunk is the number of elements in one unit of work. Chunk boundaries are
// part of the kernels' definition of determinism: do not make it depend on
// the machine.
const Chunk = 1 << 14

var threads atomic.Int32

// SetThreads sets how many goroutines kernels use; n ≤ 0 restores the
// default, runtime.GOMAXPROCS(0).
func SetThreads(n int) {
	if n < 0 {
		n = 0
	}
	threads.Store(int32(n))
}

// Threads is the number of goroutines kernels use.
func Threads() int {
	if n := int(threads.Load()); n > 0 {
		return n
	}
	return runtime.GOMAXPROCS(0)
}

// NumChunks is the number of Chunk-sized pieces n elements split into.
func NumChunks(n int) int { return (n + Chunk - 1) / Chunk }

// For calls fn(worker, i) for every i in [0, n), on min(Threads(), n)
// goroutines; worker ∈ [0, Workers(n)) identifies the goroutine so that fn
// can use per-worker scratch space. It returns when all calls are done.
func For(n int, fn func(worker, i int)) { ForN(n, Workers(n), fn) }

// ForN is For on exactly min(w, n) goroutines (at least one).
func ForN(n, w int, fn func(worker, i int)) {
	w = min(w, n)
	if w <= 1 {
		for i := 0; i < n; i++ {
			fn(0, i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	wg.Add(w)
	for k := 0; k < w; k++ {
		go func(worker int) {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(worker, i)
			}
		}(k)
	}
	wg.Wait()
}

// Workers is the number of goroutines For(n, …) uses.
func Workers(n int) int {
	w := Threads()
	if n < w {
		w = n
	}
	if w < 1 {
		w = 1
	}
	return w
}
