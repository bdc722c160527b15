package stream

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/gocore/sysmem"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Direct reading (issue 15). A cold input used to reach the merge through
// the page cache and the mapping: the kernel reads each file into fresh
// page-cache pages, and the merge's first touch of each page costs
// microseconds on virtual machines whose host maps guest memory in on first
// use (3–5 µs a page measured here, against 0.02 µs a page touched before:
// seconds for a model of a few GB). The direct reader instead reads the
// inputs of the jobs ahead with O_DIRECT into one ring of memory that it
// reuses from job to job: the device writes straight into pages the process
// has touched before, and the page cache is neither filled nor polluted.
//
// It serves merges whose inputs are too large to stay in the page cache
// anyway (more than half the machine's memory): reading them through the
// cache would only evict everything else, for no later merge to find them
// there. A smaller merge reads through the mapping, so that the next merge
// of the same models (trying another method, say) finds its inputs cached.
// Within such a merge it serves the jobs whose inputs are all whole tensors
// of mapped files (not the merged vocabulary's buffers, not statistics)
// whose pages are mostly not in the page cache (a warm file is read faster
// through the mapping), merged by a Merger that reads one tensor per call
// (not WholeModel). Every other job reads through the mapping as before.
// The bytes merged are the same either way. NPSFUSE_BUFFERED_READ=1 turns
// the direct reader off; NPSFUSE_DIRECT_READ=1 uses it for every job it
// can serve, whatever the sizes and the page cache.

// directPiece is the size of one read: a multiple of every device's
// logical block size, large enough that the kernel queues many device
// requests for it.
const directPiece = 8 << 20

// directAlign is the alignment O_DIRECT needs of buffer addresses, file
// offsets and lengths (4 KiB covers every logical block size in use).
const directAlign = 4096

// directReaders is how many reads are in flight at once.
const directReaders = 4

// residentMax is the fraction of a job's input pages in the page cache
// above which the job reads through the mapping instead.
const residentMax = 0.5

// inputSpan is one input of a job: its file, the offset of its first byte
// and its length, and the element type the merge views it as.
type inputSpan struct {
	path  string
	off   int64
	n     int64
	dtype tensor.DType
}

// ringBytes is the ring memory a job's inputs take: each span widened to
// aligned file offsets.
func ringBytes(spans []inputSpan) int64 {
	var n int64
	for _, s := range spans {
		n += spanBytes(s)
	}
	return n
}

// spanBytes is one span's ring memory (none for an empty tensor).
func spanBytes(s inputSpan) int64 {
	if s.n == 0 {
		return 0
	}
	return alignUp(s.off+s.n) - alignDown(s.off)
}

func alignDown(x int64) int64 { return x &^ (directAlign - 1) }
func alignUp(x int64) int64   { return (x + directAlign - 1) &^ (directAlign - 1) }

// directJob is one job's reads.
type directJob struct {
	spans []inputSpan
	need  int64    // ring bytes
	at    int64    // ring position (monotonic) of its first byte
	bufs  [][]byte // the spans' bytes in the ring, valid once done is closed
	done  chan struct{}
	left  int // pieces not read yet (directReader.mu)
	err   error
}

// directFile is an input file opened twice: with O_DIRECT, and plainly for
// the reads O_DIRECT refuses.
type directFile struct {
	path    string
	direct  *os.File // nil when O_DIRECT was refused
	plain   *os.File
	refused bool // O_DIRECT refused a read: the rest go through plain
	mu      sync.Mutex
}

// readPiece is one read of a job: len(buf) bytes of f at off, of which
// the first need bytes must exist (the rest may lie past the end of file).
type readPiece struct {
	job  *directJob
	f    *directFile
	off  int64
	buf  []byte
	need int
}

// directReader reads the jobs' inputs ahead of the merge, in job order,
// into a ring of size bytes: it places each job's spans after the previous
// job's, waits while the ring is full (the merge releases jobs in order),
// and hands the reads to directReaders goroutines.
type directReader struct {
	jobs  []*directJob // per job; nil for a job read through the mapping
	ring  []byte
	files map[string]*directFile

	mu       sync.Mutex
	cond     *sync.Cond
	released int64 // ring position up to which the merge released memory
	stopped  bool
	pieces   chan readPiece
	wg       sync.WaitGroup
	// unreserve gives the ring's bytes back (Options.ReserveMemory).
	unreserve func()
}

// openDirectRead opens path for reading with O_DIRECT (a variable so that
// tests can make it fail).
var openDirectRead = openReadDirect

// preadDirect is the pread of the O_DIRECT files (a variable so that tests
// can inject errors).
var preadDirect = pread

// maxRing bounds the read-ahead part of the ring (it is resident memory,
// unlike the page cache the mapped read-ahead fills).
const maxRing = 1 << 30

// newDirectReader starts reading the jobs that have spans (spans[i] nil:
// job i reads through the mapping) into a ring that holds the largest job
// and window bytes (at most maxRing) beyond it, or all the jobs if less:
// reading goes on ahead while the largest job is merged (a ring of the
// largest job alone stalled the reads during the embeddings' merge and
// made a 1.1B merge ~10 % slower). It returns nil when no job is read
// directly, or when the ring would exceed limit bytes (> 0), an input file
// cannot be opened, reserve (if not nil) refuses the ring's bytes or the
// ring cannot be mapped (the caller then reads every job through the
// mapping). A file that
// refuses O_DIRECT is read through the page cache into the ring.
func newDirectReader(spans [][]inputSpan, window, limit int64, reserve func(int64, string) (func(), error)) *directReader {
	r := &directReader{jobs: make([]*directJob, len(spans)), files: map[string]*directFile{}}
	var largest, total int64
	any := false
	for i, ss := range spans {
		if ss == nil {
			continue
		}
		for _, s := range ss {
			if _, ok := r.files[s.path]; ok {
				continue
			}
			df, err := openDirectPair(s.path)
			if err != nil {
				r.closeFiles()
				return nil
			}
			r.files[s.path] = df
		}
		j := &directJob{spans: ss, need: ringBytes(ss), done: make(chan struct{})}
		largest, total = max(largest, j.need), total+j.need
		r.jobs[i] = j
		any = true
	}
	if !any {
		return nil
	}
	size := alignUp(min(largest+min(window, maxRing), total))
	if limit > 0 && size > limit {
		r.closeFiles()
		return nil
	}
	r.unreserve = func() {}
	if reserve != nil {
		rel, err := reserve(size, "the merge's read buffer")
		if err != nil {
			r.closeFiles()
			return nil
		}
		r.unreserve = rel
	}
	ring, err := ringAlloc(int(size))
	if err != nil {
		r.unreserve()
		r.closeFiles()
		return nil
	}
	r.ring = ring
	r.cond = sync.NewCond(&r.mu)
	r.pieces = make(chan readPiece, directReaders)
	for range directReaders {
		r.wg.Add(1)
		go r.read()
	}
	r.wg.Add(1)
	go r.schedule()
	return r
}

// openDirectPair opens path with and without O_DIRECT; only a failure of
// the plain open is an error.
func openDirectPair(path string) (*directFile, error) {
	plain, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	df := &directFile{path: path, plain: plain}
	if f, err := openDirectRead(path); err == nil {
		df.direct = f
	}
	return df, nil
}

// schedule places the jobs in the ring one after another and queues their
// reads.
func (r *directReader) schedule() {
	defer r.wg.Done()
	defer close(r.pieces)
	size := int64(len(r.ring))
	var pos int64 // ring position of the next free byte (monotonic)
	for _, j := range r.jobs {
		if j == nil {
			continue
		}
		// A job never straddles the ring's end: it starts over at 0.
		if pos%size+j.need > size {
			pos += size - pos%size
		}
		r.mu.Lock()
		for !r.stopped && pos+j.need-r.released > size {
			r.cond.Wait()
		}
		stopped := r.stopped
		r.mu.Unlock()
		if stopped {
			return
		}
		j.at = pos
		mem := r.ring[pos%size : pos%size+j.need]
		pos += j.need
		var ps []readPiece
		for _, s := range j.spans {
			if s.n == 0 {
				j.bufs = append(j.bufs, []byte{})
				continue
			}
			lo, hi := alignDown(s.off), alignUp(s.off+s.n)
			b := mem[:hi-lo]
			mem = mem[hi-lo:]
			j.bufs = append(j.bufs, b[s.off-lo:s.off-lo+s.n])
			for at := lo; at < hi; at += directPiece {
				end := min(at+directPiece, hi)
				need := max(0, min(end, s.off+s.n)-at)
				ps = append(ps, readPiece{job: j, f: r.files[s.path], off: at, buf: b[at-lo : end-lo], need: int(need)})
			}
		}
		r.mu.Lock()
		j.left = len(ps)
		r.mu.Unlock()
		if len(ps) == 0 {
			close(j.done)
		}
		for _, p := range ps {
			if r.isStopped() {
				return
			}
			r.pieces <- p
		}
	}
}

func (r *directReader) isStopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped
}

// read serves pieces until the queue closes.
func (r *directReader) read() {
	defer r.wg.Done()
	for p := range r.pieces {
		err := p.f.readFull(p.buf, p.off, p.need)
		r.mu.Lock()
		if err != nil && p.job.err == nil {
			p.job.err = err
		}
		p.job.left--
		if p.job.left == 0 {
			close(p.job.done)
		}
		r.mu.Unlock()
	}
}

// readFull reads buf at off, with O_DIRECT unless the file refused it; the
// end of file may come after need bytes, not before. Each read is one
// pread: a short direct read is the end of the file (another read would
// start at an offset O_DIRECT refuses).
func (f *directFile) readFull(buf []byte, off int64, need int) error {
	f.mu.Lock()
	d := f.direct
	if f.refused {
		d = nil
	}
	f.mu.Unlock()
	got := 0
	for got < len(buf) {
		var n int
		var err error
		if d != nil {
			n, err = preadDirect(d, buf[got:], off+int64(got))
			if err != nil && n <= 0 && errors.Is(err, errInvalid) {
				// O_DIRECT refused (a filesystem or an alignment it does
				// not take): this read and the rest go through the cache.
				f.mu.Lock()
				f.refused = true
				f.mu.Unlock()
				d = nil
				continue
			}
		} else {
			n, err = pread(f.plain, buf[got:], off+int64(got))
		}
		if errors.Is(err, errInterrupted) {
			continue
		}
		if err != nil && !isEOF(err) {
			return fmt.Errorf("read %s at %d: %w", f.path, off+int64(got), err)
		}
		got += max(n, 0)
		if n <= 0 || isEOF(err) || (d != nil && n%directAlign != 0) {
			break // the end of the file
		}
	}
	if got < need {
		return fmt.Errorf("%w: %s: the file ends at %d bytes, a tensor needs %d: truncated while merging?",
			ErrInput, f.path, off+int64(got), off+int64(need))
	}
	return nil
}

// wait returns job i's input bytes once read (nil, nil: job i reads
// through the mapping).
func (r *directReader) wait(i int) ([][]byte, error) {
	if r == nil || r.jobs[i] == nil {
		return nil, nil
	}
	j := r.jobs[i]
	<-j.done
	return j.bufs, j.err
}

// views returns job i's input bytes as vectors of their element types,
// named like the mapping's for errors.
func (r *directReader) views(i int, bufs [][]byte, name string) ([]tensor.Vec, error) {
	vs := make([]tensor.Vec, len(bufs))
	for k, b := range bufs {
		s := r.jobs[i].spans[k]
		v, err := vecOf(b, s.dtype, s.path, name)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInput, err)
		}
		vs[k] = v
	}
	return vs, nil
}

// directJobs counts the merged tensors whose inputs were read directly
// (tests).
var directJobs atomic.Int64

// direct reports whether job i reads through the direct reader.
func (r *directReader) direct(i int) bool { return r != nil && r.jobs[i] != nil }

// release frees job i's ring memory (jobs are released in order).
func (r *directReader) release(i int) {
	if !r.direct(i) {
		return
	}
	j := r.jobs[i]
	r.mu.Lock()
	r.released = max(r.released, j.at+j.need)
	j.bufs = nil
	r.mu.Unlock()
	r.cond.Broadcast()
}

// close stops the reads, waits for the goroutines and closes the files;
// safe to call more than once and on nil.
func (r *directReader) close() {
	if r == nil {
		return
	}
	r.mu.Lock()
	already := r.stopped
	r.stopped = true
	r.mu.Unlock()
	r.cond.Broadcast()
	if already {
		return
	}
	// The scheduler may be blocked sending a piece: drain until it closes
	// the queue (the readers take pieces too).
	go func() {
		for range r.pieces {
		}
	}()
	r.wg.Wait()
	r.closeFiles()
	ringFree(r.ring)
	r.ring = nil
	r.unreserve()
}

func (r *directReader) closeFiles() {
	for _, f := range r.files {
		if f.direct != nil {
			_ = f.direct.Close()
		}
		_ = f.plain.Close()
	}
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

// directMode chooses which jobs read directly: directAuto (the default:
// in a merge whose inputs exceed half the memory, the eligible jobs whose
// inputs are mostly not in the page cache), directAlways (every eligible
// job: NPSFUSE_DIRECT_READ=1, tests) or directNever
// (NPSFUSE_BUFFERED_READ=1).
type directModeT int

const (
	directAuto directModeT = iota
	directAlways
	directNever
)

var directMode = directAuto

// planDirect starts the direct reader for the jobs that can use it (see
// the top of this file), or returns nil when none can.
func planDirect(jobs []job, window int64, reserve func(int64, string) (func(), error)) *directReader {
	mode := directMode
	switch {
	case os.Getenv("NPSFUSE_BUFFERED_READ") == "1":
		mode = directNever
	case os.Getenv("NPSFUSE_DIRECT_READ") == "1":
		mode = directAlways
	}
	if !directSupported || mode == directNever {
		return nil
	}
	if window <= 0 {
		window = defaultPrefetchWindow
	}
	var limit int64 // the most ring memory to take (0: any)
	if mode == directAuto {
		var total int64
		for _, j := range jobs {
			total += j.read
		}
		mem := sysmem.Limit()
		if !tooLargeToCache(total, mem) {
			return nil
		}
		// The ring is memory the kernel cannot reclaim, where mapped
		// pages are page cache it can: in a tight container a ring of a
		// large share of the memory could end the merge, not speed it.
		limit = mem / 4
	}
	spans := make([][]inputSpan, len(jobs))
	for i, j := range jobs {
		if j.spans == nil || len(j.vocab) > 0 || (j.merged >= 0 && (j.merger == nil || j.merger.WholeModel())) {
			continue
		}
		if mode != directAlways && residentShare(j.inputs) > residentMax {
			continue
		}
		spans[i] = j.spans
	}
	return newDirectReader(spans, window, limit, reserve)
}

// residentShare is the fraction of the pages holding bs (slices of file
// mappings) that are in the page cache; 1 when it cannot tell (the caller
// then keeps reading through the mapping).
func residentShare(bs [][]byte) float64 {
	var in, all int
	for _, b := range bs {
		i, n, ok := checkpoint.Resident(b)
		if !ok {
			return 1
		}
		in, all = in+i, all+n
	}
	if all == 0 {
		return 1
	}
	return float64(in) / float64(all)
}

// tooLargeToCache reports whether a merge reading inputs bytes cannot
// expect them to stay in the page cache of a machine with mem bytes of
// memory (0: unknown, never): more than half of it.
func tooLargeToCache(inputs, mem int64) bool {
	return mem > 0 && inputs > mem/2
}
