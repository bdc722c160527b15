package merge

import (
	"fmt"
	"math"
	"math/bits"
	"slices"

	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/topk"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// This file finds top-k cuts of the task vectors' magnitudes, for every
// model of a selection unit in one pass over the data (the top-k of
// METHODS.md: exactly k entries of largest |τ|, ties broken by lower index
// in chunk order). It gives the same cut as topk.Select, which it falls
// back to when its guess misses:
//
//  1. sample: a fixed sample of each unit's |τ_m| (n/64 entries, between
//     minSample and sampleSize, in runs of sampleBlock at an even stride) brackets the k-th
//     largest magnitude between two sample values lo ≤ hi, four standard
//     deviations of the sample rank either side of the expected position;
//  2. count: one pass over every chunk counts, per model, the entries above
//     hi (and, for NeuroMerging's σ_t, sums magnitudes) and collects the
//     candidates in [lo, hi] (about 1 % of the entries);
//  3. finish: the cut is the (k − #above)-th largest candidate; the tie
//     allowance of each chunk follows from the candidates equal to it. When
//     the k-th largest is not among the candidates, topk.Select ranks that
//     model's unit exactly instead.
//
// Everything is a function of the data and the fixed chunking, so the cut
// does not depend on the thread count. Small units (≤ exactUnit entries)
// skip the sample: every entry is a candidate. Cost: one read of every
// input (topk.Select needs two or three per model) plus the sample.

// cut is the outcome of a selection: an entry is kept when its magnitude
// bits exceed bits, or equal bits and it is among the first allow[c] such
// entries of its chunk c (allow nil: all of them).
type cut struct {
	none, all bool
	bits      uint32
	allow     []int32
}

// allowance is how many entries equal to bits chunk c keeps (−1: all).
func (c *cut) allowance(chunk int) int {
	if c.allow == nil {
		return -1
	}
	return int(c.allow[chunk])
}

// keepTop zeroes the entries of tau (chunk c of its unit) outside the cut.
func keepTop(ct *cut, c int, tau []float32) {
	switch {
	case ct.all:
		return
	case ct.none:
		clear(tau)
		return
	}
	vec.KeepTop(tau, ct.bits, ct.allowance(c))
}

const (
	sampleSize  = 1 << 16
	minSample   = 1 << 13
	sampleBlock = 16
	exactUnit   = 1 << 17
)

// rankTarget asks for the cut keeping the k largest |τ_m| of a unit.
type rankTarget struct {
	m int
	k int64
}

// unitSelection is what selectUnits computes for one unit.
type unitSelection struct {
	cuts []cut // one per target
	// total[m] = Σ|τ_m| and kept[i] = Σ|τ̂| under cut i, in float64,
	// summed per chunk and then in chunk order.
	total []float64
	kept  []float64
}

// window is a [lo, hi] window of magnitude bits of model m in a unit,
// which should hold one or more targets' cuts.
type window struct {
	m      int
	lo, hi uint32
}

// winCount is the counting pass's result for one chunk and window.
type winCount struct {
	above    int64   // entries with bits > hi
	sumAbove float64 // Σ|τ| over the entries above hi (with sums)
	cands    []uint32
}

// chunkCount is the counting pass's result for one chunk.
type chunkCount struct {
	win    []winCount
	sumAll []float64 // per model, Σ|τ| over the chunk (with sums)
}

// selectUnits computes the cuts the targets ask for in each unit, with the
// magnitude sums (see unitSelection) when sums is set.
func (e *engine) selectUnits(units []int, sums bool, targets func(u int, n int64) []rankTarget) ([]unitSelection, error) {
	all := e.units()
	T := e.T
	// 1. Windows per unit, from the targets' ranks.
	wins := make([][]window, len(units))
	winOf := make([][]int, len(units))
	tgts := make([][]rankTarget, len(units))
	for i, u := range units {
		tgts[i] = targets(u, all[u].n)
	}
	e.p.Pool.For(len(units), func(_, i int) {
		wins[i], winOf[i] = e.windows(all[units[i]], tgts[i])
	})
	op := e.newOnePass(units, sums, tgts, wins, winOf)
	// 2. One counting pass over the chunks of every unit.
	type job struct{ i, c int }
	var jobs []job
	for i, u := range units {
		for c := range all[u].chunks {
			jobs = append(jobs, job{i, c})
		}
	}
	counts := make([][]chunkCount, len(units)) // [unit][chunk]
	for i, u := range units {
		counts[i] = make([]chunkCount, len(all[u].chunks))
	}
	var fail chunkError
	e.p.Pool.For(len(jobs), func(_, j int) {
		jb := jobs[j]
		ch := all[units[jb.i]].chunks[jb.c]
		ws := e.workspace()
		defer e.scratch.Put(ws)
		var cc chunkCount
		var err error
		if op != nil {
			cc, err = op.countMerge(e, jb.i, jb.c, ch, ws, wins[jb.i])
		} else {
			cc, err = e.countChunk(ch, ws, wins[jb.i], sums)
		}
		if err != nil {
			fail.set(ch.gc, err)
			return
		}
		counts[jb.i][jb.c] = cc
	})
	if fail.err != nil {
		return nil, fail.err
	}
	// Every input chunk of these units is now known to be finite.
	if e.checked == nil {
		e.checked = make([]bool, len(all))
	}
	for _, u := range units {
		e.checked[u] = true
	}
	// 3. Finish every target.
	res := make([]unitSelection, len(units))
	for i, u := range units {
		un := all[u]
		sel := unitSelection{total: make([]float64, T)}
		if sums {
			for _, cc := range counts[i] {
				for m := range T {
					sel.total[m] += cc.sumAll[m]
				}
			}
		}
		// The targets' cuts in parallel (each is a function of its own
		// window's counts), then the rare exact rankings in order.
		type done struct {
			ct   cut
			kept float64
			ok   bool
		}
		fin := make([]done, len(tgts[i]))
		e.p.Pool.For(len(tgts[i]), func(_, ti int) {
			d := &fin[ti]
			d.ct, d.kept, d.ok = finishCut(tgts[i][ti], wins[i][winOf[i][ti]], winOf[i][ti], un, counts[i], sums)
		})
		missed := false
		for ti, t := range tgts[i] {
			ct, kept, ok := fin[ti].ct, fin[ti].kept, fin[ti].ok
			if !ok {
				missed = true
				var err error
				if ct, kept, err = e.exactCut(un, t, sums); err != nil {
					return nil, err
				}
			}
			if ct.all {
				kept = sel.total[t.m]
			}
			sel.cuts = append(sel.cuts, ct)
			sel.kept = append(sel.kept, kept)
		}
		res[i] = sel
		// 4. The one-pass merge's flagged entries, unless a cut fell
		// outside its window (the merge pass then merges the unit).
		if op != nil && op.units[i].on && !missed {
			op.patch(e, i, un, &res[i])
		}
	}
	return res, nil
}

// windows picks, per target, the window of magnitudes that should hold its
// cut, from a strided sample of the unit; targets that need no window
// (k ≤ 0 or k ≥ n) get the first of their model's. Equal windows of a
// model are shared; every model has at least one (its counting pass gives
// the magnitude sums). Small units get the whole range.
func (e *engine) windows(un unit, tgts []rankTarget) ([]window, []int) {
	T := e.T
	whole := func(m int) window { return window{m, 0, math.MaxUint32} }
	var wins []window
	add := func(w window) int {
		for i, x := range wins {
			if x == w {
				return i
			}
		}
		wins = append(wins, w)
		return len(wins) - 1
	}
	of := make([]int, len(tgts))
	if un.n <= exactUnit {
		for m := range T {
			add(whole(m))
		}
		for i, t := range tgts {
			of[i] = add(whole(t.m))
		}
		return wins, of
	}
	// Blocks of sampleBlock consecutive entries (one cache line of float32)
	// at a fixed stride: random single entries would cost a cache miss each.
	// A unit of n entries gets n/64 samples, at least minSample (a
	// smaller sample widens the windows) and at most sampleSize.
	size := min(max(un.n/64, minSample), sampleSize)
	blocks := size / sampleBlock
	stride := (un.n + blocks - 1) / blocks
	// The gathering runs as P tasks (shares of the chunks, up to T per
	// core, so that every core works whatever T is), each reading every
	// model's blocks at its positions: the sample's reads are cache and
	// TLB misses (on a cold checkpoint the first reads of its pages), and
	// a block of the base, read once for all models, is one miss instead
	// of T. The ranks are selected from a model's shares together
	// (selectDesc), so the windows do not depend on P.
	pos := make([]int64, len(un.chunks)+1) // unit index of each chunk's first entry
	for c, ch := range un.chunks {
		pos[c+1] = pos[c] + int64(ch.hi-ch.lo)
	}
	P := min(T*e.p.Pool.Size(), len(un.chunks))
	parts := make([][]uint32, T*P) // model m's share i at m·P + i
	e.p.Pool.For(P, func(_, part int) {
		c0, c1 := len(un.chunks)*part/P, len(un.chunks)*(part+1)/P
		s := make([][]uint32, T)
		for m := range s {
			s[m] = make([]uint32, 0, int64(size)*(pos[c1]-pos[c0])/max(pos[len(un.chunks)], 1)+2*sampleBlock)
		}
		sc := newSampleScratch(T)
		for c := c0; c < c1; c++ {
			e.sampleChunk(un.chunks[c], pos[c], pos[c+1]-pos[c], stride, s, sc)
		}
		for m := range T {
			parts[m*P+part] = s[m]
		}
	})
	// Each target needs two ranks of its model's sample (sampleBounds);
	// they are selected from the shares as they are, without a sort.
	S := make([]int, T) // sample size per model
	for task, part := range parts {
		S[task/P] += len(part)
	}
	ranks := make([][]int, T)
	slots := make([][2]int, len(tgts)) // per target, where its hi and lo bounds are in ranks[m]; -1: none
	for i, t := range tgts {
		if t.k <= 0 || t.k >= un.n {
			continue
		}
		top, bot := sampleBounds(t.k, un.n, S[t.m])
		for j, r := range [2]int{top, bot} {
			slots[i][j] = -1
			if r >= 0 && r < S[t.m] {
				slots[i][j] = len(ranks[t.m])
				ranks[t.m] = append(ranks[t.m], r)
			}
		}
	}
	picked := make([][]uint32, T) // the values at ranks[m]
	e.p.Pool.For(T, func(_, m int) {
		picked[m] = selectDesc(parts[m*P:(m+1)*P], ranks[m])
	})
	first := make([]int, T)
	for m := range first {
		first[m] = -1
	}
	for i, t := range tgts {
		if t.k <= 0 || t.k >= un.n {
			of[i] = -1
			continue
		}
		w := whole(t.m)
		if j := slots[i][0]; j >= 0 {
			w.hi = picked[t.m][j]
		}
		if j := slots[i][1]; j >= 0 {
			w.lo = picked[t.m][j]
		}
		of[i] = add(w)
		if first[t.m] < 0 {
			first[t.m] = of[i]
		}
	}
	for m := range T {
		if first[m] < 0 {
			first[m] = add(window{m, math.MaxUint32, math.MaxUint32}) // counts only
		}
	}
	for i, t := range tgts {
		if of[i] < 0 {
			of[i] = first[t.m]
		}
	}
	return wins, of
}

// sampleBounds are the ranks in a descending sample of S magnitudes that
// bracket the k-th largest of n: four standard deviations of the sample
// rank (plus 8) either side of its expected rank. top (the hi end) may be
// negative and bot (the lo end) S or more: no bound on that side.
func sampleBounds(k, n int64, S int) (top, bot int) {
	s := float64(S)
	q := float64(k) / float64(n)
	margin := 4*math.Sqrt(s*q*(1-q)) + 8
	return int(q*s - margin), int(q*s + margin)
}

// selectDesc returns, for each rank r of ranks (0 ≤ r < the shares'
// total length), the value a descending sort of the shares' concatenation
// would put at r: an MSD radix selection with digits of 11, 11 and 10
// bits. One histogram of the top digit over the shares gives each rank's
// bin; one branch-free pass copies out the entries of the bins from the
// lowest rank's to the highest's (a few hundredths of a sample: the ranks
// of a window are close), and the lower digits select among those. The
// shares are not modified, and the result depends on their multiset only,
// not on how it is split.
func selectDesc(shares [][]uint32, ranks []int) []uint32 {
	out := make([]uint32, len(ranks))
	if len(ranks) == 0 {
		return out
	}
	var top [1 << 11]int
	for _, sh := range shares {
		for _, v := range sh {
			top[v>>21]++
		}
	}
	// Bins blo..bhi hold every rank; above counts the entries of the higher bins.
	blo, bhi := len(top), -1
	for _, r := range ranks {
		b, _ := rankBin(top[:], r)
		blo, bhi = min(blo, b), max(bhi, b)
	}
	above, m := 0, 0
	for b := bhi + 1; b < len(top); b++ {
		above += top[b]
	}
	for b := blo; b <= bhi; b++ {
		m += top[b]
	}
	cand := make([]uint32, m+1) // +1: every entry is stored, the index moves on for the kept ones
	span, k := uint64(bhi-blo), 0
	for _, sh := range shares {
		for _, v := range sh {
			cand[k] = v
			d := uint64((v >> 21) - uint32(blo)) // wraps below blo
			k += int((d - span - 1) >> 63)       // 1 when d ≤ span
		}
	}
	cand = cand[:m]
	work := make([]uint32, m)
	digits, known := selectDigits[:], uint32(0)
	if blo == bhi { // one bin: the top digit is known
		digits, known = digits[1:], uint32(blo)<<21
	}
	for i, r := range ranks {
		copy(work, cand)
		out[i] = known | selectIn(work, r-above, digits)
	}
	return out
}

// rankBin is the bin of a histogram (count, highest values last) holding
// the r-th largest entry, and r's rank among that bin's entries.
func rankBin(count []int, r int) (bin, rest int) {
	b := len(count) - 1
	for ; r >= count[b]; b-- {
		r -= count[b]
	}
	return b, r
}

// selectDigits are the digits (shift, bins) of selectIn: bits 21-31,
// 10-20 and 0-9.
var selectDigits = [...]struct{ shift, bins uint32 }{{21, 1 << 11}, {10, 1 << 11}, {0, 1 << 10}}

// selectIn is the r-th largest of cand, which it reorders, found digit by
// digit (each by a histogram and an in-place filter); bits above the first
// digit are left out of the result (the caller knows them).
func selectIn(cand []uint32, r int, digits []struct{ shift, bins uint32 }) uint32 {
	var prefix uint32
	for _, d := range digits {
		var count [1 << 11]int
		for _, v := range cand {
			count[(v>>d.shift)&(d.bins-1)]++
		}
		var b int
		b, r = rankBin(count[:d.bins], r)
		prefix |= uint32(b) << d.shift
		if d.shift == 0 {
			break
		}
		k := 0
		for _, v := range cand {
			if (v>>d.shift)&(d.bins-1) == uint32(b) {
				cand[k] = v
				k++
			}
		}
		cand = cand[:k]
	}
	return prefix
}

// sampleBatch is how many sample blocks appendSamples starts reading at
// once.
const sampleBatch = 32

// sampleScratch is a sampling task's scratch: the models appendSamples
// reads, their samples and chunks (as float32 or bfloat16 slices), and
// appendSamples' first entries.
type sampleScratch struct {
	ms    []int
	sm    [][]uint32
	x32   [][]float32
	x16   [][]uint16
	first []uint32
}

// newSampleScratch returns the scratch of a task over T models.
func newSampleScratch(T int) *sampleScratch {
	return &sampleScratch{ms: make([]int, 0, T), sm: make([][]uint32, 0, T),
		x32: make([][]float32, 0, T), x16: make([][]uint16, 0, T), first: make([]uint32, sampleBatch*T)}
}

// sampleChunk appends to s[m] model m's sample entries of chunk ch, whose
// first entry has unit index pos (n entries), for every model: the blocks
// of models stored in the base's dtype (float32 or bfloat16) and in layout
// order are read by appendSamples, all such models together; the other
// models' entry by entry through storageIndex (a row method's transposed
// tensor, mixed dtypes, generalOnly).
func (e *engine) sampleChunk(ch chunkRef, pos, n, stride int64, s [][]uint32, sc *sampleScratch) {
	t := &e.tensors[ch.ti]
	b := t.Base
	// Stored in layout order unless a row method reads a transposed tensor
	// (storageIndex); generalOnly reads every sample entry through
	// storageIndex (the tests compare).
	inOrder := (!e.method.Rows || !e.geom[ch.ti].transposed) && !generalOnly
	ms := sc.ms[:0] // the models appendSamples reads
	if inOrder && (b.DType == tensor.F32 || b.DType == tensor.BF16) {
		for m, x := range t.Models {
			if x.DType == b.DType {
				ms = append(ms, m)
			}
		}
	}
	if len(ms) > 0 {
		sm := sc.sm[:0]
		for _, m := range ms {
			sm = append(sm, s[m])
		}
		if b.DType == tensor.F32 {
			xs := sc.x32[:0]
			for _, m := range ms {
				xs = append(xs, t.Models[m].F32[ch.lo:ch.hi])
			}
			appendSamples(sm, xs, b.F32[ch.lo:ch.hi], pos, n, stride, func(v float32) float32 { return v }, appendMags16Slices, sc.first)
			clear(xs)
		} else {
			xs := sc.x16[:0]
			for _, m := range ms {
				xs = append(xs, t.Models[m].U16[ch.lo:ch.hi])
			}
			appendSamples(sm, xs, b.U16[ch.lo:ch.hi], pos, n, stride,
				func(u uint16) float32 { return math.Float32frombits(uint32(u) << 16) }, nil, sc.first)
			clear(xs)
		}
		for i, m := range ms {
			s[m] = sm[i]
		}
		clear(sm)
	}
	for m, x := range t.Models {
		if slices.Contains(ms, m) {
			continue
		}
		for g := (pos + stride - 1) / stride * stride; g < pos+n; g += stride {
			for j := int(g - pos); j < int(min(g-pos+sampleBlock, n)); j++ {
				idx := e.storageIndex(ch, j)
				s[m] = append(s[m], topk.AbsBits(x.At(idx)-b.At(idx)))
			}
		}
	}
}

// appendSamples appends to s[m] the magnitude bits |xs[m] − b| of the
// sample blocks that start in one chunk stored in layout order:
// sampleBlock entries (fewer at the chunk's end) from every multiple of
// stride in the unit indices [pos, pos+n); xs[m] and bs are the chunk's
// entries of model m and of the base, widened to float32 by f. The blocks'
// first entries are read first, sampleBatch blocks and every model at a
// time: each block is a cache miss (and a TLB miss at a stride of 4 KiB or
// more), and independent loads let the misses overlap instead of queuing
// behind one block's appends; the base's block is read once for all
// models. block16, when not nil, appends a whole block of 16 entries at
// once (the same bits as entry by entry). first is scratch of
// sampleBatch·len(xs) entries.
func appendSamples[E float32 | uint16](s [][]uint32, xs [][]E, bs []E, pos, n, stride int64, f func(E) float32, block16 func(s []uint32, x, b []E) []uint32, first []uint32) {
	for g0 := (pos + stride - 1) / stride * stride; g0 < pos+n; g0 += sampleBatch * stride {
		nb := 0
		for g := g0; g < pos+n && nb < sampleBatch; g += stride {
			o := int(g - pos)
			bv := f(bs[o])
			for m, x := range xs {
				first[m*sampleBatch+nb] = math.Float32bits(f(x[o])-bv) & 0x7fffffff
			}
			nb++
		}
		for k := range nb {
			g := g0 + int64(k)*stride
			lo, hi := int(g-pos), int(min(g-pos+sampleBlock, n))
			bb := bs[lo+1 : hi]
			for m, x := range xs {
				if block16 != nil && hi-lo == 16 {
					s[m] = block16(s[m], x[lo:hi], bs[lo:hi])
					continue
				}
				sm := append(s[m], first[m*sampleBatch+k])
				xb := x[lo+1 : hi]
				bb := bb[:len(xb)]
				for j, v := range xb {
					sm = append(sm, math.Float32bits(f(v)-f(bb[j]))&0x7fffffff)
				}
				s[m] = sm
			}
		}
	}
}

// appendMags16Slices is appendMags16 on two 16-entry slices.
func appendMags16Slices(s []uint32, x, b []float32) []uint32 {
	return appendMags16(s, (*[16]float32)(x), (*[16]float32)(b))
}

// countChunk is the counting pass over one chunk for every window, with
// the magnitude sums (NeuroMerging's σ_t: countChunkSums) when sums is set.
func (e *engine) countChunk(ch chunkRef, ws *workspace, wins []window, sums bool) (chunkCount, error) {
	base, err := e.loadBase(ch, ws)
	if err != nil {
		return chunkCount{}, err
	}
	cc := chunkCount{win: make([]winCount, len(wins)), sumAll: make([]float64, e.T)}
	if sums {
		err = e.countChunkSums(ch, ws, base, wins, &cc)
	} else {
		err = e.countChunkFused(ch, ws, base, wins, &cc)
	}
	return cc, err
}

// countChunkFused is countChunk without the magnitude sums: per model, one
// vec.CountDiffWindows pass over the model's chunk (read where it is
// stored) counts every window of the model and checks the model for NaN
// and ±Inf, instead of a finiteness pass, a pass writing |τ| and a
// counting pass per window.
func (e *engine) countChunkFused(ch chunkRef, ws *workspace, base []float32, wins []window, cc *chunkCount) error {
	var lo, hi [8]uint32
	var above [8]int64
	var cands [8][]uint32
	var which [8]int
	for m := range e.T {
		x := e.view(e.tensors[ch.ti].Models[m], ch, ws, ws.models[0])
		k := 0
		checked := false
		flush := func() bool {
			ok := vec.CountDiffWindows(x, base, lo[:k], hi[:k], above[:k], cands[:k])
			for i := range k {
				c := &cc.win[which[i]]
				c.above, c.cands = above[i], cands[i]
			}
			checked, k = true, 0
			return ok
		}
		for w, win := range wins {
			if win.m != m {
				continue
			}
			lo[k], hi[k], above[k], cands[k], which[k] = win.lo, win.hi, 0, nil, w
			k++
			if k == len(lo) && !flush() {
				return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
			}
		}
		if (k > 0 || !checked) && !flush() {
			return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
		}
	}
	return nil
}

// finishCut derives target t's cut from the counts of its window w (win),
// or reports that the window missed it. The kept sum is computed when sums
// is set (the counting pass summed magnitudes), else it is 0.
func finishCut(t rankTarget, win window, w int, un unit, counts []chunkCount, sums bool) (cut, float64, bool) {
	switch {
	case t.k <= 0:
		return cut{none: true}, 0, true
	case t.k >= un.n:
		return cut{all: true}, 0, true
	}
	var above int64
	nc := 0
	lists := make([][]uint32, len(counts))
	for c, cc := range counts {
		above += cc.win[w].above
		lists[c] = cc.win[w].cands
		nc += len(lists[c])
	}
	kk := t.k - above
	if kk <= 0 || kk > int64(nc) {
		return cut{}, 0, false
	}
	bits, gtc, eq := cutInWindow(lists, win.lo, win.hi, kk)
	gt := above + gtc
	var eqTotal int64
	for _, n := range eq {
		eqTotal += int64(n)
	}
	ct := cut{bits: bits}
	keep := t.k - gt
	if keep < eqTotal {
		ct.allow = eq
		for c, n := range eq {
			a := int32(min(int64(n), keep))
			eq[c] = a
			keep -= int64(a)
		}
	}
	if !sums {
		return ct, 0, true
	}
	// Σ|τ̂|: per chunk, the entries above hi, the larger candidates and the
	// allowed ties; then in chunk order.
	tie := float64(math.Float32frombits(bits))
	var kept float64
	for c, cc := range counts {
		s := cc.win[w].sumAbove
		for _, a := range cc.win[w].cands {
			if a > bits {
				s += float64(math.Float32frombits(a))
			}
		}
		// eq[c]: the chunk's allowance, or all its ties when allow is nil.
		kept += s + float64(eq[c])*tie
	}
	return ct, kept, true
}

// cutInWindow returns the kk-th largest (1 ≤ kk ≤ their number) of a
// window's candidates, all in [lo, hi] and given per chunk, with the
// number of candidates above it and, per chunk, equal to it. It reads the
// candidates twice and copies none but the few in the histogram bin that
// holds the answer: a count per bin of 11 bits of the window's range, then
// the bin's members, in which kthLargest finds it.
func cutInWindow(lists [][]uint32, lo, hi uint32, kk int64) (v uint32, gt int64, eq []int32) {
	const digit, bins = 11, 1 << 11
	shift := uint(max(0, bits.Len32(hi-lo)-digit))
	var h [bins]int64
	for _, s := range lists {
		for _, a := range s {
			h[(a-lo)>>shift]++
		}
	}
	b, above := pickBin(func(b int) int64 { return h[b] }, bins, kk)
	// The members of bin b, in chunk order; ends[c] closes chunk c's.
	sel := make([]uint32, 0, h[b])
	ends := make([]int, len(lists))
	for c, s := range lists {
		for _, a := range s {
			if (a-lo)>>shift == uint32(b) {
				sel = append(sel, a)
			}
		}
		ends[c] = len(sel)
	}
	v = kthLargest(slices.Clone(sel), int(kk-above))
	gt, eq = above, make([]int32, len(lists))
	from := 0
	for c, to := range ends {
		g, q := countAboveEq(sel[from:to], v)
		gt += int64(g)
		eq[c] = int32(q)
		from = to
	}
	return v, gt, eq
}

// countAboveEq counts the values of s above v and equal to it, without
// branches: about half the candidates of a window lie above its cut, in no
// order, so a branch on the comparison would be mispredicted half the time.
func countAboveEq(s []uint32, v uint32) (gt, eq int) {
	for _, a := range s {
		gt += b2i(a > v)
		eq += b2i(a == v)
	}
	return gt, eq
}

// b2i is 1 for true and 0 for false (the compiler makes it a SETcc).
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// kthLargest returns the k-th largest of s (1 ≤ k ≤ len(s)), reordering
// s: a radix select on the bits above the minimum, 11 bits a pass from the
// top, then a sort of the last few. The candidates of a window span a
// narrow range, so one or two passes leave a few dozen values; topk.Select
// (two passes of 65536-bin histograms per worker) cost several times more
// on these 10⁴–10⁵ values.
func kthLargest(s []uint32, k int) uint32 {
	const digit, bins = 11, 1 << 11
	for len(s) > 64 {
		mn, mx := slices.Min(s), slices.Max(s)
		if mn == mx {
			return mn
		}
		shift := max(0, bits.Len32(mx-mn)-digit)
		var hist [bins]int
		for _, v := range s {
			hist[(v-mn)>>shift]++
		}
		b, above := bins-1, 0
		for ; above+hist[b] < k; b-- {
			above += hist[b]
		}
		n := 0
		for _, v := range s {
			if int((v-mn)>>shift) == b {
				s[n] = v
				n++
			}
		}
		s, k = s[:n], k-above
	}
	slices.Sort(s)
	return s[len(s)-k]
}

// exactCut ranks model t.m's unit with topk.Select (the fallback when the
// bracket missed) and sums the kept magnitudes in one more pass.
func (e *engine) exactCut(un unit, t rankTarget, sums bool) (cut, float64, error) {
	var fail chunkError
	src := e.magnitudes(t.m, un.chunks, &fail)
	tc := topk.Select(t.k, un.n, len(un.chunks), src, e.p.Pool.Size())
	if fail.err != nil {
		return cut{}, 0, fail.err
	}
	ct := cut{none: tc.None, all: tc.All, bits: tc.Bits}
	if !tc.None && !tc.All && tc.Allow(0) != -1 {
		ct.allow = make([]int32, len(un.chunks))
		for c := range ct.allow {
			ct.allow[c] = int32(tc.Allow(c))
		}
	}
	if !sums {
		return ct, 0, fail.err
	}
	partial := make([]float64, len(un.chunks))
	e.p.Pool.For(len(un.chunks), func(_, c int) {
		buf := make([]uint32, 0, un.chunks[c].hi-un.chunks[c].lo)
		mags := src(c, buf)
		tau := make([]float32, len(mags))
		for j, a := range mags {
			tau[j] = math.Float32frombits(a)
		}
		keepTop(&ct, c, tau)
		partial[c] = absSum(tau)
	})
	var kept float64
	for _, s := range partial {
		kept += s
	}
	return ct, kept, fail.err
}
