package parallel

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestPoolSize: an explicit count wins; ≤ 0 falls back to the process
// default, which SetThreads changes and SetThreads(≤ 0) resets.
func TestPoolSize(t *testing.T) {
	defer SetThreads(0)
	procs := runtime.GOMAXPROCS(0)
	tests := []struct {
		name          string
		def, threads  int
		want, wantDef int
	}{
		{"zero pool, no default", 0, 0, procs, procs},
		{"explicit", 0, 3, 3, procs},
		{"explicit beats default", 5, 2, 2, 5},
		{"zero pool takes default", 5, 0, 5, 5},
		{"negative pool takes default", 4, -1, 4, 4},
		{"negative default resets", -5, 0, procs, procs},
	}
	for _, tc := range tests {
		SetThreads(tc.def)
		if got := (Pool{Threads: tc.threads}).Size(); got != tc.want {
			t.Errorf("%s: Pool{%d}.Size() = %d, want %d", tc.name, tc.threads, got, tc.want)
		}
		if got := Threads(); got != tc.wantDef {
			t.Errorf("%s: Threads() = %d, want %d", tc.name, got, tc.wantDef)
		}
	}
}

func TestWorkersAndChunks(t *testing.T) {
	p := Pool{Threads: 4}
	for _, tc := range []struct{ n, workers int }{{0, 1}, {1, 1}, {3, 3}, {4, 4}, {100, 4}} {
		if got := p.Workers(tc.n); got != tc.workers {
			t.Errorf("Workers(%d) = %d, want %d", tc.n, got, tc.workers)
		}
	}
	for _, tc := range []struct{ n, chunks int }{{0, 0}, {1, 1}, {Chunk, 1}, {Chunk + 1, 2}, {3 * Chunk, 3}} {
		if got := NumChunks(tc.n); got != tc.chunks {
			t.Errorf("NumChunks(%d) = %d, want %d", tc.n, got, tc.chunks)
		}
	}
}

// TestForVisitsEachIndexOnce: every index exactly once, worker ids in
// range, and exactly Workers(n) distinct workers used at most.
func TestForVisitsEachIndexOnce(t *testing.T) {
	for _, threads := range []int{1, 2, 3, 8} {
		p := Pool{Threads: threads}
		for _, n := range []int{0, 1, 2, 7, 1000} {
			visits := make([]atomic.Int32, n)
			w := p.Workers(n)
			var bad atomic.Int32
			p.For(n, func(worker, i int) {
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

// TestPoolBoundsConcurrency: a pool never runs more of fn at once than its
// size, even while the process default says otherwise.
func TestPoolBoundsConcurrency(t *testing.T) {
	defer SetThreads(0)
	SetThreads(8)
	for _, threads := range []int{1, 2, 3} {
		var live, peak atomic.Int32
		Pool{Threads: threads}.For(200, func(_, _ int) {
			n := live.Add(1)
			for {
				old := peak.Load()
				if n <= old || peak.CompareAndSwap(old, n) {
					break
				}
			}
			runtime.Gosched()
			live.Add(-1)
		})
		if p := int(peak.Load()); p > threads {
			t.Errorf("Pool{%d}: %d calls ran at once", threads, p)
		}
	}
}

// chunkSum sums x in Chunk pieces combined in chunk order: the contract
// the kernels rely on.
func chunkSum(p Pool, x []float32) float32 {
	parts := make([]float32, NumChunks(len(x)))
	p.For(len(parts), func(_, c int) {
		lo, hi := c*Chunk, min((c+1)*Chunk, len(x))
		var s float32
		for _, v := range x[lo:hi] {
			s += v
		}
		parts[c] = s
	})
	var s float32
	for _, v := range parts {
		s += v
	}
	return s
}

// TestChunkOrderReductionIsDeterministic: partial sums per chunk, combined
// in chunk order, give the same bits whatever the thread count (a float32
// sum in completion order would not).
func TestChunkOrderReductionIsDeterministic(t *testing.T) {
	x := make([]float32, 5*Chunk+123)
	for i := range x {
		x[i] = float32(i%97)*1e-3 + float32(i%7)*1e3
	}
	want := chunkSum(Pool{Threads: 1}, x)
	for _, threads := range []int{2, 3, 8} {
		for range 5 {
			if got := chunkSum(Pool{Threads: threads}, x); got != want {
				t.Fatalf("threads=%d: sum %v, want %v", threads, got, want)
			}
		}
	}
}

// TestConcurrentPoolsAndSetThreads: calls with different pools running at
// once, while another goroutine changes the process default, each keep
// their own size and give the same bits (run with -race).
func TestConcurrentPoolsAndSetThreads(t *testing.T) {
	defer SetThreads(0)
	x := make([]float32, 3*Chunk+5)
	for i := range x {
		x[i] = float32(i%13) * 0.37
	}
	want := chunkSum(Pool{Threads: 1}, x)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				SetThreads(i % 5)
			}
		}
	})
	errs := make(chan string, 16)
	var calls sync.WaitGroup
	for _, threads := range []int{1, 2, 3, 4} {
		calls.Go(func() {
			p := Pool{Threads: threads}
			for range 20 {
				if p.Size() != threads {
					errs <- "pool size changed under SetThreads"
					return
				}
				if got := chunkSum(p, x); got != want {
					errs <- "sum differs"
					return
				}
			}
		})
	}
	calls.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
