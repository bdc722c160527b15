package parallel

import (
	"runtime"
	"sync/atomic"
	"testing"
)

func TestThreads(t *testing.T) {
	defer SetThreads(0)
	tests := []struct {
		set, want int
	}{
		{3, 3}, {1, 1}, {0, runtime.GOMAXPROCS(0)}, {-5, runtime.GOMAXPROCS(0)},
	}
	for _, tc := range tests {
		SetThreads(tc.set)
		if got := Threads(); got != tc.want {
			t.Errorf("SetThreads(%d): Threads() = %d, want %d", tc.set, got, tc.want)
		}
	}
}

func TestWorkersAndChunks(t *testing.T) {
	defer SetThreads(0)
	SetThreads(4)
	for _, tc := range []struct{ n, workers int }{{0, 1}, {1, 1}, {3, 3}, {4, 4}, {100, 4}} {
		if got := Workers(tc.n); got != tc.workers {
			t.Errorf("Workers(%d) = %d, want %d", tc.n, got, tc.workers)
		}
	}
	for _, tc := range []struct{ n, chunks int }{{0, 0}, {1, 1}, {Chunk, 1}, {Chunk + 1, 2}, {3 * Chunk, 3}} {
		if got := NumChunks(tc.n); got != tc.chunks {
			t.Errorf("NumChunks(%d) = %d, want %d", tc.n, got, tc.chunks)
		}
	}
}

// TestForVisitsEachIndexOnce: every index exactly once, worker ids in range,
// for several thread counts.
func TestForVisitsEachIndexOnce(t *testing.T) {
	defer SetThreads(0)
	for _, threads := range []int{1, 2, 3, 8} {
		SetThreads(threads)
		for _, n := range []int{0, 1, 2, 7, 1000} {
			visits := make([]atomic.Int32, n)
			w := Workers(n)
			var bad atomic.Int32
			For(n, func(worker, i int) {
				if worker < 0 || worker >= w {
					bad.Add(1)
				}
				visits[i].Add(1)
			})
			if bad.Load() != 0 {
				t.Fatalf("threads=%d n=%d: worker id outside [0, %d)", threads, n, w)
			}
			for i := range visits {
				if c := visits[i].Load(); c != 1 {
					t.Fatalf("threads=%d n=%d: index %d visited %d times", threads, n, i, c)
				}
			}
		}
	}
}

// TestChunkOrderReductionIsDeterministic is the contract the kernels rely
// on: partial sums per chunk, combined in chunk order, give the same bits
// whatever the thread count (a float32 sum in completion order would not).
func TestChunkOrderReductionIsDeterministic(t *testing.T) {
	defer SetThreads(0)
	x := make([]float32, 5*Chunk+123)
	for i := range x {
		x[i] = float32(i%97)*1e-3 + float32(i%7)*1e3
	}
	sum := func() float32 {
		parts := make([]float32, NumChunks(len(x)))
		For(len(parts), func(_, c int) {
			lo, hi := c*Chunk, min((c+1)*Chunk, len(x))
			var s float32
			for _, v := range x[lo:hi] {
				s += v
			}
			parts[c] = s
		})
		var s float32
		for _, p := range parts {
			s += p
		}
		return s
	}
	SetThreads(1)
	want := sum()
	for _, threads := range []int{2, 3, 8} {
		SetThreads(threads)
		for range 5 {
			if got := sum(); got != want {
				t.Fatalf("threads=%d: sum %v, want %v", threads, got, want)
			}
		}
	}
}
