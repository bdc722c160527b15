// Package parallel runs the kernels' loops over fixed-size chunks on a
// bounded number of goroutines.
//
// Results never depend on the thread count: work is split into chunks whose
// boundaries depend only on the data size (Chunk elements), every chunk is
// computed the same way whichever goroutine takes it, and reductions are
// combined in chunk order by the caller, never in completion order.
//
// The thread count travels with the call: a kernel takes a Pool (a small
// value; its zero value means the process default) and runs its loops with
// Pool.For. Two calls with different pools may run at the same time in one
// process without affecting each other. SetThreads only changes the default
// that zero-valued pools use (Python's npsfuse.set_threads).
package parallel

import (
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// Chunk is the number of elements in one unit of work. Chunk boundaries are
// part of the kernels' definition of determinism: do not make it depend on
// the machine.
const Chunk = 1 << 14

var threads atomic.Int32

// SetThreads sets the process default thread count, used by every Pool
// whose Threads is ≤ 0; n ≤ 0 restores runtime.GOMAXPROCS(0). Calls that
// carry their own Pool are not affected.
func SetThreads(n int) {
	if n < 0 {
		n = 0
	}
	threads.Store(int32(n))
}

// Threads is the process default thread count (see SetThreads).
func Threads() int { return Pool{}.Size() }

// Pool is the thread count of one call: how many goroutines its kernels
// use. The zero value uses the process default (SetThreads, else
// runtime.GOMAXPROCS(0)). A Pool holds no goroutines; it is a value that
// kernels pass along.
type Pool struct {
	// Threads is the number of goroutines; ≤ 0 means the process default.
	Threads int
}

// Size is the number of goroutines the pool's loops use (at least one).
func (p Pool) Size() int {
	if p.Threads > 0 {
		return p.Threads
	}
	if n := int(threads.Load()); n > 0 {
		return n
	}
	return runtime.GOMAXPROCS(0)
}

// Workers is the number of goroutines p.For(n, …) uses: min(p.Size(), n),
// at least one.
func (p Pool) Workers(n int) int { return max(1, min(p.Size(), n)) }

// For calls fn(worker, i) for every i in [0, n), on p.Workers(n)
// goroutines; worker ∈ [0, p.Workers(n)) identifies the goroutine so that
// fn can use per-worker scratch space. It returns when all calls are done.
func (p Pool) For(n int, fn func(worker, i int)) { ForN(n, p.Workers(n), fn) }

// NumChunks is the number of Chunk-sized pieces n elements split into.
func NumChunks(n int) int { return (n + Chunk - 1) / Chunk }

// ForN calls fn(worker, i) for every i in [0, n) on exactly min(w, n)
// goroutines (at least one); worker ∈ [0, min(w, n)).
//
// A panic in fn, on any goroutine, stops the loop and is raised again on
// the caller's goroutine once every worker has stopped, where the caller's
// recover (pybind's, a daemon job's) can catch it: a panic left on a
// worker goroutine would end the whole process. The workers also turn a
// memory fault into a panic (debug.SetPanicOnFault), as Guard does for the
// caller: an input file truncated while it is mapped then fails the call
// instead of killing the process with SIGBUS.
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
	var first atomic.Pointer[panicked]
	wg.Add(w)
	for k := 0; k < w; k++ {
		go func(worker int) {
			defer wg.Done()
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			defer func() {
				if r := recover(); r != nil {
					first.CompareAndSwap(nil, &panicked{r})
					next.Store(int64(n)) // the others stop at their next index
				}
			}()
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
	if p := first.Load(); p != nil {
		panic(p.value)
	}
}

// panicked holds a worker's recovered panic value.
type panicked struct{ value any }
