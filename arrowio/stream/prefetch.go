package stream

import (
	"sync"
)

// prefetchBlock is the size of one read-ahead request. The kernel caps a
// single WillNeed request at its read-ahead limit (read_ahead_kb, or the
// device's largest request when that is larger), so a tensor is asked for
// in blocks; each block still becomes large device requests (the kernel
// reads in 2 MB steps), and the requests of many blocks queue up together.
const prefetchBlock = 2 << 20

// defaultPrefetchWindow bounds how far the reads run ahead of the merge, in
// input bytes of the jobs after the one being merged. The pages read ahead
// sit in the page cache, not in the process's resident set: the window
// costs page cache, not RSS.
const defaultPrefetchWindow = 512 << 20

// prefetcher reads the inputs of the jobs ahead of the merge into the page
// cache, on its own goroutine, in job order: it asks the kernel for each
// job's input ranges block by block (advise), without waiting for the
// reads, so that many requests are queued on the device at once (a virtual
// or solid-state disk reads much faster at queue depth > 1 than one
// sequential stream of page faults). It stays within window bytes of input
// beyond the job the merge is on; the job the merge needs next is always
// asked for, whatever its size.
//
// The prefetcher only issues hints: correctness never depends on it (a page
// it did not bring in is read when the merge touches it).
type prefetcher struct {
	inputs [][][]byte // per job, the input ranges (slices of the mappings)
	cum    []int64    // cum[j] = input bytes of jobs [0, j)
	window int64
	block  int
	advise func([]byte) // asks for one block

	mu      sync.Mutex
	cond    *sync.Cond
	current int  // first job the merge has not released
	stopped bool // close was called
	done    chan struct{}
}

// newPrefetcher starts a prefetcher over the jobs' input ranges. window ≤ 0
// means defaultPrefetchWindow; block ≤ 0 means prefetchBlock.
func newPrefetcher(inputs [][][]byte, window int64, block int, advise func([]byte)) *prefetcher {
	if window <= 0 {
		window = defaultPrefetchWindow
	}
	if block <= 0 {
		block = prefetchBlock
	}
	p := &prefetcher{inputs: inputs, cum: make([]int64, len(inputs)+1), window: window, block: block,
		advise: advise, done: make(chan struct{})}
	for j, rs := range inputs {
		p.cum[j+1] = p.cum[j]
		for _, r := range rs {
			p.cum[j+1] += int64(len(r))
		}
	}
	p.cond = sync.NewCond(&p.mu)
	go p.loop()
	return p
}

// allowed reports whether job j may be asked for now (p.mu held): it is the
// job the merge needs next, or it ends within the window beyond that one.
func (p *prefetcher) allowed(j int) bool {
	return j <= p.current || p.cum[j+1]-p.cum[p.current+1] <= p.window
}

func (p *prefetcher) loop() {
	defer close(p.done)
	for j := range p.inputs {
		p.mu.Lock()
		for !p.stopped && !p.allowed(j) {
			p.cond.Wait()
		}
		stop, passed := p.stopped, j < p.current
		p.mu.Unlock()
		if stop {
			return
		}
		if passed { // the merge got there first
			continue
		}
		for _, r := range p.inputs[j] {
			for off := 0; off < len(r); off += p.block {
				if p.isStopped() {
					return
				}
				p.advise(r[off:min(off+p.block, len(r))])
			}
		}
	}
}

func (p *prefetcher) isStopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped
}

// release tells the prefetcher the merge is done with job j (and every job
// before it): the window moves on.
func (p *prefetcher) release(j int) {
	p.mu.Lock()
	if j+1 > p.current {
		p.current = j + 1
	}
	p.mu.Unlock()
	p.cond.Broadcast()
}

// close stops the prefetcher and waits for its goroutine; it is safe to
// call more than once.
func (p *prefetcher) close() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.cond.Broadcast()
	<-p.done
}
