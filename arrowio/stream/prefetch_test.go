package stream

import (
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// recorder collects the blocks a prefetcher asks for, as (job, input,
// offset) found by address, and can hold the prefetcher inside advise.
type recorder struct {
	mu     sync.Mutex
	got    [][3]int
	inputs [][][]byte
	gate   chan struct{} // when set, advise waits for a value before returning
}

func (r *recorder) advise(b []byte) {
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	for j, rs := range r.inputs {
		for k, in := range rs {
			lo := uintptr(unsafe.Pointer(unsafe.SliceData(in)))
			if p >= lo && p < lo+uintptr(len(in)) {
				r.mu.Lock()
				r.got = append(r.got, [3]int{j, k, int(p - lo)})
				r.mu.Unlock()
				if r.gate != nil {
					<-r.gate
				}
				return
			}
		}
	}
	panic("advise outside the inputs")
}

func (r *recorder) calls() [][3]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// waitCalls waits until n blocks were asked for, then checks that no more
// come within a short while.
func (r *recorder) waitCalls(t *testing.T, n int) [][3]int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(r.calls()) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	got := r.calls()
	if len(got) != n {
		t.Fatalf("%d blocks asked for, want %d: %v", len(got), n, got)
	}
	return got
}

// jobInputs makes jobs with inputs of the given sizes.
func jobInputs(sizes ...[]int) [][][]byte {
	out := make([][][]byte, len(sizes))
	for j, ss := range sizes {
		for _, s := range ss {
			out[j] = append(out[j], make([]byte, s))
		}
	}
	return out
}

// With a window wide enough for everything, every block of every input is
// asked for once, in job order, input order and offset order.
func TestPrefetcherOrder(t *testing.T) {
	in := jobInputs([]int{10, 4}, []int{0}, []int{3, 7, 1})
	r := &recorder{inputs: in}
	p := newPrefetcher(in, 1<<20, 4, r.advise)
	defer p.close()
	got := r.waitCalls(t, 3+1+1+2+1)
	want := [][3]int{{0, 0, 0}, {0, 0, 4}, {0, 0, 8}, {0, 1, 0}, {2, 0, 0}, {2, 1, 0}, {2, 1, 4}, {2, 2, 0}}
	if !slices.Equal(got, want) {
		t.Errorf("blocks %v, want %v", got, want)
	}
}

// The prefetcher stays within the window beyond the job being merged, but
// always asks for the job the merge needs next, however large.
func TestPrefetcherWindow(t *testing.T) {
	in := jobInputs([]int{100}, []int{10}, []int{10}, []int{100}, []int{10})
	r := &recorder{inputs: in}
	p := newPrefetcher(in, 25, 100, r.advise)
	defer p.close()
	r.waitCalls(t, 3) // job 0 (larger than the window), then 1 and 2 (20 bytes beyond job 0)
	p.release(0)
	r.waitCalls(t, 3) // job 3 ends 110 bytes beyond job 1: not yet
	p.release(1)
	r.waitCalls(t, 3)
	p.release(2)
	got := r.waitCalls(t, 5) // job 3 is next: asked for whatever its size, and job 4 (10 bytes beyond it)
	if got[3][0] != 3 || got[4][0] != 4 {
		t.Errorf("blocks %v", got)
	}
}

// Jobs the merge has passed while the prefetcher was busy are not asked for.
func TestPrefetcherSkipsPassedJobs(t *testing.T) {
	in := jobInputs([]int{5}, []int{5}, []int{5}, []int{5})
	r := &recorder{inputs: in, gate: make(chan struct{})}
	p := newPrefetcher(in, 1, 5, r.advise)
	defer p.close()
	r.waitCalls(t, 1) // held inside advise for job 0
	p.release(2)
	close(r.gate)
	got := r.waitCalls(t, 2)
	if got[1][0] != 3 {
		t.Errorf("after release(2) the prefetcher asked for job %d, want 3", got[1][0])
	}
}

// close stops a prefetcher waiting for the merge, promptly, and again is a
// no-op; no block is asked for after close returns.
func TestPrefetcherClose(t *testing.T) {
	in := jobInputs([]int{8}, []int{8}, []int{8})
	r := &recorder{inputs: in}
	p := newPrefetcher(in, 1, 8, r.advise)
	r.waitCalls(t, 1)
	done := make(chan struct{})
	go func() {
		p.close()
		p.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("close did not return")
	}
	p.release(2)
	time.Sleep(20 * time.Millisecond)
	if n := len(r.calls()); n != 1 {
		t.Errorf("%d blocks asked for after close", n-1)
	}
	// A prefetcher stopped while inside advise stops before its next block.
	r2 := &recorder{inputs: in, gate: make(chan struct{})}
	p2 := newPrefetcher(in, 1<<20, 2, r2.advise)
	r2.waitCalls(t, 1)
	go func() {
		time.Sleep(10 * time.Millisecond)
		close(r2.gate)
	}()
	p2.close()
	if n := len(r2.calls()); n != 1 {
		t.Errorf("%d blocks asked for after close", n-1)
	}
}

// An empty job list finishes at once.
func TestPrefetcherEmpty(t *testing.T) {
	p := newPrefetcher(nil, 0, 0, func([]byte) { t.Error("advise called") })
	<-p.done
	p.close()
}
