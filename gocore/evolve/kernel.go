package evolve

import (
	"fmt"
	"math"
	"sort"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Offspring writes the trial vector u of t into out: u = donor where the
// crossover takes the donor, else the parent x_i = pop[t.Individual]. pop
// holds the individuals in index order; every buffer must have out's length
// and dtype, and out must not overlap any of them (checked). Arithmetic is
// float32 (16-bit storage is widened per chunk and the result rounded to
// nearest-even). It returns how many elements came from the donor.
//
// The donor v is computed by search.DiffMutate (Evolver: x_i + F·(x_ref −
// x_i); rand/1: x_r1 + F·(x_r2 − x_r3); best/1: x_best + F·(x_r1 − x_r2))
// or search.CurrentToBestMutate, with F rounded to float32.
//
// Crossover, per chunk b of parallel.Chunk elements [lo, hi):
//
//   - Element, CR >= SparseCR: element j of the chunk takes the donor iff
//     16-bit lane (j−lo) mod 4 of word ⌊(j−lo)/4⌋ of ChunkRNG(k, b), with
//     k = TrialKey(seed, g, i), is below DenseThreshold(CR) (see
//     selectDense); JRand is taken too when it falls in the chunk.
//   - Element, 0 < CR < SparseCR: geometric gaps on ChunkRNG(k, b): starting at
//     j = lo−1, repeat u = 1 − Float64(), gap = ⌊ln u / ln(1 − CR)⌋ (ln(1 − CR)
//     by log1p); stop when gap > hi−j−2, else j += 1 + gap and take element j.
//     Then JRand if in the chunk. This is a Bernoulli(CR) mask too, at
//     O(CR·n) draws; only the taken elements read the donor's sources.
//     CR = 0 takes nothing (and draws nothing) but JRand.
//   - Tensor, Block: the segments with t.SegMask set come from the donor.
//
// Chunks run in parallel on c.Pool's goroutines; the result does
// not depend on their number, nor on whether the vector loops run (see the
// package documentation). c is validated (and its default granularity
// filled in) first. O(n) time; scratch O(threads·parallel.Chunk).
func Offspring(out tensor.Vec, pop []tensor.Vec, c *Config, t *Trial) (int64, error) {
	n := out.Len()
	if err := c.Validate(n); err != nil {
		return 0, err
	}
	if err := checkBuffers(out, pop); err != nil {
		return 0, err
	}
	if err := checkTrial(c, t, len(pop), n); err != nil {
		return 0, err
	}
	k := &kernel{c: c, t: t, n: n, out: out, xi: pop[t.Individual], f: float32(t.F)}
	k.refs = make([]tensor.Vec, len(t.Refs))
	for r, j := range t.Refs {
		k.refs[r] = pop[j]
	}
	nc := parallel.NumChunks(n)
	w := c.Pool.Workers(nc)
	k.scratch = make([]scratch, w)
	taken := make([]int64, nc)
	parallel.ForN(nc, w, func(worker, b int) {
		taken[b] = k.chunk(&k.scratch[worker], b)
	})
	var sum int64
	for _, v := range taken {
		sum += v
	}
	return sum, nil
}

// checkBuffers validates lengths, dtypes and the absence of overlap with out.
func checkBuffers(out tensor.Vec, pop []tensor.Vec) error {
	n := out.Len()
	if out.DType.Size() == 0 {
		return fmt.Errorf("%w: offspring buffer has unsupported dtype %v", ErrInput, out.DType)
	}
	olo, ohi := span(out)
	for j, p := range pop {
		if p.DType != out.DType {
			return fmt.Errorf("%w: individual %d is %v, the offspring buffer %v", ErrInput, j, p.DType, out.DType)
		}
		if p.Len() != n {
			return fmt.Errorf("%w: individual %d has %d elements, the offspring buffer %d", ErrInput, j, p.Len(), n)
		}
		if lo, hi := span(p); n > 0 && lo < ohi && olo < hi {
			return fmt.Errorf("%w: the offspring buffer overlaps individual %d", ErrInput, j)
		}
	}
	return nil
}

// span is the address range of a Vec's memory.
func span(v tensor.Vec) (lo, hi uintptr) {
	if v.DType == tensor.F32 {
		lo = uintptr(unsafe.Pointer(unsafe.SliceData(v.F32)))
		return lo, lo + uintptr(4*len(v.F32))
	}
	lo = uintptr(unsafe.Pointer(unsafe.SliceData(v.U16)))
	return lo, lo + uintptr(2*len(v.U16))
}

// checkTrial validates t against the configuration and population.
func checkTrial(c *Config, t *Trial, np, n int) error {
	need, err := minPopulation(c.Strategy)
	if err != nil {
		return err
	}
	if np < need {
		return fmt.Errorf("%w: strategy %s needs a population of at least %d, got %d", ErrInput, c.Strategy, need, np)
	}
	if t.Individual < 0 || t.Individual >= np {
		return fmt.Errorf("%w: individual %d outside [0, %d)", ErrInput, t.Individual, np)
	}
	want := 3
	if c.Strategy == StrategyEvolver {
		want = 1
	}
	if len(t.Refs) != want {
		return fmt.Errorf("%w: strategy %s takes %d references, got %d", ErrInput, c.Strategy, want, len(t.Refs))
	}
	for _, j := range t.Refs {
		if j < 0 || j >= np {
			return fmt.Errorf("%w: reference %d outside [0, %d)", ErrInput, j, np)
		}
	}
	if math.IsNaN(t.F) || math.IsInf(t.F, 0) || !(t.CR >= 0 && t.CR <= 1) {
		return fmt.Errorf("%w: need finite F and CR in [0, 1], got F=%v CR=%v", ErrInput, t.F, t.CR)
	}
	if t.JRand >= n {
		return fmt.Errorf("%w: forced index %d outside [0, %d)", ErrInput, t.JRand, n)
	}
	if c.Granularity != Element {
		if c.Granularity == Tensor && c.Segments[len(c.Segments)-1] != n {
			return fmt.Errorf("%w: segment boundaries end at %d, buffers hold %d elements", ErrInput, c.Segments[len(c.Segments)-1], n)
		}
		if len(t.SegMask) != c.numSegments(n) {
			return fmt.Errorf("%w: segment mask has %d entries for %d segments", ErrInput, len(t.SegMask), c.numSegments(n))
		}
	}
	return nil
}

// kernel holds one Offspring call's inputs.
type kernel struct {
	c       *Config
	t       *Trial
	n       int
	out, xi tensor.Vec
	refs    []tensor.Vec
	f       float32
	scratch []scratch
}

// scratch is one worker's buffers: float32 copies of the parent, the
// references and the output for 16-bit storage.
type scratch struct {
	xi   []float32
	refs [3][]float32
	out  []float32
}

func (s *scratch) ensure(wide bool) {
	if wide && s.out == nil {
		s.xi = make([]float32, parallel.Chunk)
		s.out = make([]float32, parallel.Chunk)
		for r := range s.refs {
			s.refs[r] = make([]float32, parallel.Chunk)
		}
	}
}

// chunk computes elements [b·Chunk, min(n, (b+1)·Chunk)) and returns how
// many came from the donor.
func (k *kernel) chunk(s *scratch, b int) int64 {
	lo := b * parallel.Chunk
	hi := min(lo+parallel.Chunk, k.n)
	wide := k.out.DType != tensor.F32
	s.ensure(wide)
	switch {
	case k.c.Granularity != Element:
		return k.segments(s, lo, hi)
	case k.t.CR < SparseCR:
		return k.sparse(s, b, lo, hi)
	}
	// Dense element mask, sub-block by sub-block so that the donor stays in L1.
	r := ChunkRNG(TrialKey(k.c.Seed, k.t.Generation, k.t.Individual), b)
	thr := DenseThreshold(k.t.CR)
	xi, refs, dst := k.load(s, lo, hi)
	var taken int64
	for a := 0; a < hi-lo; a += subBlock {
		z := min(a+subBlock, hi-lo)
		taken += k.dense(dst[a:z], xi[a:z], [3][]float32{sub(refs[0], a, z), sub(refs[1], a, z), sub(refs[2], a, z)},
			r, thr, k.t.JRand-lo-a)
	}
	k.store(dst, lo)
	return taken
}

// subBlock is the length of the pieces a dense chunk is processed in; a
// multiple of 4 so that the 16-bit lanes of the mask stream do not depend on
// it (and of 8, the vector width, so that only a buffer's last piece has a
// partial vector).
const subBlock = 2048

func sub(x []float32, a, z int) []float32 {
	if x == nil {
		return nil
	}
	return x[a:z]
}

// DenseThreshold is the 16-bit threshold of the dense element mask:
// ⌊CR·2¹⁶ + ½⌋, so an element is taken with probability thr/2¹⁶ (CR rounded
// to a multiple of 2⁻¹⁶, i.e. within 0.04 % of CR for CR >= SparseCR).
func DenseThreshold(cr float64) uint64 { return uint64(math.Floor(cr*65536 + 0.5)) }

// selectDense is the dense element crossover of one piece: dst holds the
// donor on entry and the trial on return. Element j of the piece uses the
// 16-bit lane j mod 4 (lane l is bits 16l…16l+15) of word ⌊j/4⌋ of r, and
// takes the donor iff lane < thr or j == jr; the piece consumes ⌈len/4⌉
// words. It returns the number of elements taken from the donor. It is
// branch-free (a random mask defeats branch prediction: search.BinomialMask
// plus search.Crossover, which define the same kind of mask with one
// Float64 per element, cost several times more per element).
func selectDense(dst, xi []float32, r *search.RNG, thr uint64, jr int) int64 {
	n := len(dst)
	xi = xi[:n]
	var taken uint64
	pick := func(j int, lane uint64) {
		m := 0 - ((lane - thr) >> 63) // all ones iff lane < thr
		if j == jr {
			m = ^uint64(0)
		}
		x := math.Float32bits(xi[j])
		d := math.Float32bits(dst[j])
		dst[j] = math.Float32frombits(x ^ ((x ^ d) & uint32(m)))
		taken += m & 1
	}
	j := 0
	for ; j+4 <= n; j += 4 {
		w := r.Uint64()
		pick(j, w&0xffff)
		pick(j+1, (w>>16)&0xffff)
		pick(j+2, (w>>32)&0xffff)
		pick(j+3, w>>48)
	}
	if j < n {
		w := r.Uint64()
		for l := 0; j < n; j, l = j+1, l+1 {
			pick(j, (w>>(16*l))&0xffff)
		}
	}
	return int64(taken)
}

// drawWords sets w to the next len(w) outputs of r, exactly as len(w) calls
// of r.Uint64 give them and leaving r in the same state: search.Step on a
// copy of the state held in locals, because RNG.Uint64 is not inlined and a
// call per word would cost about as much as the vector work it feeds.
func drawWords(w []uint64, r *search.RNG) {
	st := r.State()
	s0, s1, s2, s3 := st[0], st[1], st[2], st[3]
	for i := range w {
		w[i], s0, s1, s2, s3 = search.Step(s0, s1, s2, s3)
	}
	// A valid state never steps to all zero, the one state SetState rejects.
	_ = r.SetState(search.RNGState{s0, s1, s2, s3})
}

// sparse is the geometric-gap element crossover of a chunk (CR < SparseCR).
func (k *kernel) sparse(s *scratch, b, lo, hi int) int64 {
	k.copyParent(lo, hi)
	var taken int64
	jr := k.t.JRand
	forcedDone := !(jr >= lo && jr < hi)
	if k.t.CR > 0 {
		r := ChunkRNG(TrialKey(k.c.Seed, k.t.Generation, k.t.Individual), b)
		lq := math.Log1p(-k.t.CR)
		for j := lo - 1; ; {
			u := 1 - r.Float64()
			gap := math.Floor(math.Log(u) / lq)
			if gap > float64(hi-j-2) { // next taken element would be >= hi
				break
			}
			j += 1 + int(gap)
			k.element(s, j)
			taken++
			if j == jr {
				forcedDone = true
			}
		}
	}
	if !forcedDone {
		k.element(s, jr)
		taken++
	}
	return taken
}

// segments is the Tensor/Block crossover of the chunk [lo, hi).
func (k *kernel) segments(s *scratch, lo, hi int) int64 {
	var first int
	if k.c.Granularity == Tensor {
		// Last segment starting at or before lo.
		first = sort.SearchInts(k.c.Segments, lo+1) - 1
	} else {
		first = lo / k.c.BlockSize
	}
	var taken int64
	for seg := first; seg < len(k.t.SegMask); seg++ {
		a, z := k.c.segment(seg, k.n)
		if a >= hi {
			break
		}
		a, z = max(a, lo), min(z, hi)
		if !k.t.SegMask[seg] {
			k.copyParent(a, z)
			continue
		}
		xi, refs, dst := k.load(s, a, z)
		k.mutate(dst, xi, refs)
		k.store(dst, a)
		taken += int64(z - a)
	}
	return taken
}

// element writes the donor's element j into out.
func (k *kernel) element(s *scratch, j int) {
	xi, refs, dst := k.load(s, j, j+1)
	k.mutate(dst, xi, refs)
	k.store(dst, j)
}

// copyParent copies x_i[lo:hi] into out (raw bits for 16-bit storage).
func (k *kernel) copyParent(lo, hi int) {
	if k.out.DType == tensor.F32 {
		copy(k.out.F32[lo:hi], k.xi.F32[lo:hi])
	} else {
		copy(k.out.U16[lo:hi], k.xi.U16[lo:hi])
	}
}

// load returns float32 views of x_i and the references over [lo, hi) and
// the float32 destination: slices of the buffers themselves for float32
// storage, widened copies in s otherwise.
func (k *kernel) load(s *scratch, lo, hi int) (xi []float32, refs [3][]float32, dst []float32) {
	m := hi - lo
	if k.out.DType == tensor.F32 {
		for r, v := range k.refs {
			refs[r] = v.F32[lo:hi]
		}
		return k.xi.F32[lo:hi], refs, k.out.F32[lo:hi]
	}
	for r, v := range k.refs {
		refs[r] = v.View(lo, m, s.refs[r])
	}
	return k.xi.View(lo, m, s.xi), refs, s.out[:m]
}

// store rounds dst into out at off when out is 16-bit (float32 dst already is out).
func (k *kernel) store(dst []float32, off int) {
	if k.out.DType != tensor.F32 {
		k.out.Store(dst, off)
	}
}

// denseGo is the dense element step of one sub-block in plain Go, the
// reference of the vector loop (dense): dst receives the donor, then the
// trial; it returns how many elements came from the donor.
func (k *kernel) denseGo(dst, xi []float32, refs [3][]float32, r *search.RNG, thr uint64, jr int) int64 {
	k.mutateGo(dst, xi, refs)
	return selectDense(dst, xi, r, thr, jr)
}

// mutateGo writes the donor of the trial's strategy into dst, in plain Go:
// the definition the vector loops (mutate) reproduce bit for bit.
func (k *kernel) mutateGo(dst, xi []float32, refs [3][]float32) {
	switch k.c.Strategy {
	case StrategyEvolver:
		search.DiffMutate(dst, xi, refs[0], xi, k.f)
	case search.Rand1Bin, search.Best1Bin:
		search.DiffMutate(dst, refs[0], refs[1], refs[2], k.f)
	case search.CurrentToBest1Bin:
		search.CurrentToBestMutate(dst, xi, refs[0], refs[1], refs[2], k.f)
	}
}
