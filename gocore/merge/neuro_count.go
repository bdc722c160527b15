package merge

import (
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// NeuroMerging's counting pass. Its selections sum magnitudes (σ_t needs
// Σ|τ_m| and Σ|τ̂_m|), in an order that fixes the bits of σ_t, λ₂ and so of
// every merged entry: per chunk, Σ|τ_m| and the sum of the magnitudes
// above a window's hi (packed in index order) are each vec.SumF64 — float64
// over 32 lanes by index mod 32, folded by halves — the same in every build
// and on every CPU. (Until session 11 they were three sequential float64
// chains: even entries, odd entries, the packed ones; the chains were
// latency-bound and took about a fifth of the merge. The order changed, so
// λ₂ may differ from those versions' in its last bits.) The pass:
//
//  1. countSums (vector loops in the SIMD build, countSumsGo otherwise): the
//     magnitudes |x − b| summed as they are formed, in vec.SumF64's lanes
//     (vec.SumLanes), the count of those above hi and, packed in index
//     order, their values into abv, the candidates in [lo, hi], and the
//     finiteness check of x — branch-free but for the rare candidates (the
//     former loop's two-sided range test mispredicted on every other entry
//     at MaskRate ½);
//  2. vec.SumF64 of abv.
// (Until session 14 the magnitudes were stored and summed by a second loop
// over them: the same bits, a store and a load more per entry.)

// countChunkSums is countChunk with the magnitude sums: per model, its
// chunk read where it is stored, one countSums per window of the model
// (the first one also gives the model's Σ|τ|).
func (e *engine) countChunkSums(ch chunkRef, ws *workspace, base []float32, wins []window, cc *chunkCount) error {
	n := ch.hi - ch.lo
	// A buffer free during preparation (ws.models[0] is the views' scratch).
	abv := ws.taus[0][:n]
	cbuf, _ := candScratch.Get().(*[]uint32)
	if cbuf == nil {
		cbuf = new([]uint32)
	}
	defer candScratch.Put(cbuf)
	for m := range e.T {
		x := e.view(e.tensors[ch.ti].Models[m], ch, ws, ws.models[0])
		checked := false
		for w, win := range wins {
			if win.m != m {
				continue
			}
			c := &cc.win[w]
			k, total, cands, ok := countSums(x, base, win.lo, win.hi, (*cbuf)[:0], abv)
			*cbuf = cands[:0] // grown once, reused by the next windows and chunks
			if !ok {
				return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
			}
			c.above = int64(k)
			if len(cands) > 0 {
				c.cands = slices.Clone(cands) // one allocation of the final size
			}
			c.sumAbove = vec.SumF64(abv[:k])
			cc.sumAll[m], checked = total, true
		}
		if !checked && !vec.Finite(x) {
			return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
		}
	}
	return nil
}

// candScratch holds *[]uint32 buffers the counting pass appends a window's
// candidates to before copying them out at their final size (appending to
// a nil slice reallocated it about ten times per chunk and window).
var candScratch sync.Pool

// countSums returns Σ_j |x[j] − b[j]| for j < len(x) in float64, with
// vec.SumF64's bits (the magnitudes rounded to float32 first), packs the
// magnitudes whose bits exceed hi into abv in index order and returns how
// many there are, appends to cands the bits of the
// magnitudes within [lo, hi] in index order, and reports whether every
// x[j] is finite (the rest means nothing when it is not). b and abv must
// be at least len(x) long.
func countSums(x, b []float32, lo, hi uint32, cands []uint32, abv []float32) (k int, total float64, _ []uint32, ok bool) {
	n := len(x)
	if len(b) < n || len(abv) < n {
		panic("merge.countSums: b or abv shorter than x")
	}
	var sl vec.SumLanes
	k, cands, ok = countSumsVec(x, b[:n], lo, hi, cands, abv[:n], &sl)
	return k, sl.Sum(), cands, ok
}

// countSumsGo is countSums' scalar twin, the magnitude of entry j added
// to lane j of sl (the caller folds it), returning the number packed into
// abv. The window test is one unsigned comparison, a − lo ≤ hi − lo
// (wrapping), the same as lo ≤ a ≤ hi for every lo ≤ hi, and true for one
// entry in a hundred: a predictable branch.
func countSumsGo(x, b []float32, lo, hi uint32, cands []uint32, abv []float32, sl *vec.SumLanes) (k int, _ []uint32, ok bool) {
	return countSumsFrom(x, b, lo, hi, cands, abv, sl, 0)
}

// countSumsFrom is countSumsGo over x[from:] (b and abv indexed as x; the
// packed values go to abv[0:]): the vector loops' tail.
func countSumsFrom(x, b []float32, lo, hi uint32, cands []uint32, abv []float32, sl *vec.SumLanes, from int) (k int, _ []uint32, ok bool) {
	b = b[:len(x)]
	var fin float32
	span := hi - lo
	if lo > hi { // an empty window: a − lo = a + 1 ≤ 0 never holds
		lo, span = math.MaxUint32, 0
	}
	for j := from; j < len(x); j++ {
		v := x[j]
		fin += v * 0
		a := math.Float32bits(v-b[j]) & 0x7fffffff
		f := math.Float32frombits(a)
		sl.Add(j, f)
		gt := int((uint64(hi) - uint64(a)) >> 63)
		abv[k] = f
		k += gt
		if a-lo <= span {
			cands = append(cands, a)
		}
	}
	return k, cands, fin == fin
}
