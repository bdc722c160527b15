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
// every merged entry: per chunk, Σ|τ_m| is the sum over the even entries
// plus the sum over the odd ones, each accumulated in float64 in index
// order, and the sum above a window's hi is accumulated in index order over
// those entries alone (the +0 of the others changes nothing). Those
// dependency chains cannot be reordered, so the pass splits in two:
//
//  1. countSums (vector loops in the SIMD build, countSumsGo otherwise): the
//     magnitudes |x − b| into mags, the count of those above hi and, packed
//     in index order, their values into abv, the candidates in [lo, hi],
//     and the finiteness check of x — branch-free but for the rare
//     candidates (the former loop's two-sided range test mispredicted on
//     every other entry at MaskRate ½);
//  2. sumMags: the three float64 chains in one loop, three independent adds
//     per pair of entries.

// countChunkSums is countChunk with the magnitude sums: per model, its
// chunk read where it is stored, one countSums per window of the model
// (the first one also gives the model's Σ|τ|). The sums of two windows
// (of two models, with two or more models) run together in sumMags2: the
// float64 chains are latency-bound, six of them keep the adder busier
// than three.
func (e *engine) countChunkSums(ch chunkRef, ws *workspace, base []float32, wins []window, cc *chunkCount) error {
	n := ch.hi - ch.lo
	// Buffers free during preparation: magnitudes and packed magnitudes
	// of one window each (ws.models[0] is the views' scratch).
	var sets [2]struct{ mags, abv []float32 }
	sets[0].mags, sets[0].abv = ws.out[:n], ws.taus[0][:n]
	pair := e.T >= 2
	if pair {
		sets[1].mags, sets[1].abv = ws.taus[1][:n], ws.models[1][:n]
	}
	// A window whose sums wait for a second one.
	type pending struct {
		set, k int
		c      *winCount
		total  *float64 // the model's Σ|τ| when this is its first window
	}
	var wait *pending
	var slot pending
	cur := 0
	cbuf, _ := candScratch.Get().(*[]uint32)
	if cbuf == nil {
		cbuf = new([]uint32)
	}
	defer candScratch.Put(cbuf)
	finish := func(p *pending, total, sumAbove float64) {
		p.c.sumAbove = sumAbove
		if p.total != nil {
			*p.total = total
		}
	}
	for m := range e.T {
		x := e.view(e.tensors[ch.ti].Models[m], ch, ws, ws.models[0])
		checked := false
		for w, win := range wins {
			if win.m != m {
				continue
			}
			c := &cc.win[w]
			st := &sets[cur]
			above, k, cands, ok := countSums(x, base, win.lo, win.hi, (*cbuf)[:0], st.mags, st.abv)
			*cbuf = cands[:0] // grown once, reused by the next windows and chunks
			if !ok {
				return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
			}
			c.above = above
			if len(cands) > 0 {
				c.cands = slices.Clone(cands) // one allocation of the final size
			}
			p := pending{set: cur, k: k, c: c}
			if !checked {
				p.total, checked = &cc.sumAll[m], true
			}
			vec.ClearAVXUpper() // in case a preemption left the upper halves dirty
			switch {
			case wait != nil:
				o := &sets[wait.set]
				ta, sa, tb, sb := sumMags2(o.mags, o.abv[:wait.k], st.mags, st.abv[:k])
				finish(wait, ta, sa)
				finish(&p, tb, sb)
				wait = nil
			case pair:
				slot = p
				wait = &slot
				cur = 1 - cur
			default:
				t, s := sumMags(st.mags, st.abv[:k])
				finish(&p, t, s)
			}
		}
		if !checked && !vec.Finite(x) {
			return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
		}
	}
	if wait != nil {
		o := &sets[wait.set]
		t, s := sumMags(o.mags, o.abv[:wait.k])
		finish(wait, t, s)
	}
	return nil
}

// candScratch holds *[]uint32 buffers the counting pass appends a window's
// candidates to before copying them out at their final size (appending to
// a nil slice reallocated it about ten times per chunk and window).
var candScratch sync.Pool

// countSums sets mags[j] = |x[j] − b[j]| (float32) for j < len(x), packs
// the magnitudes whose bits exceed hi into abv in index order and returns
// how many there are (also above, as int64), appends to cands the bits of
// the magnitudes within [lo, hi] in index order, and reports whether every
// x[j] is finite (the rest means nothing when it is not). b, mags and abv
// must be at least len(x) long.
func countSums(x, b []float32, lo, hi uint32, cands []uint32, mags, abv []float32) (above int64, k int, _ []uint32, ok bool) {
	n := len(x)
	if len(b) < n || len(mags) < n || len(abv) < n {
		panic("merge.countSums: b, mags or abv shorter than x")
	}
	return countSumsVec(x, b[:n], lo, hi, cands, mags[:n], abv[:n])
}

// countSumsGo is countSums' scalar twin. The window test is one unsigned
// comparison, a − lo ≤ hi − lo (wrapping), the same as lo ≤ a ≤ hi for
// every lo ≤ hi, and true for one entry in a hundred: a predictable branch.
func countSumsGo(x, b []float32, lo, hi uint32, cands []uint32, mags, abv []float32) (above int64, k int, _ []uint32, ok bool) {
	b, mags, abv = b[:len(x)], mags[:len(x)], abv[:len(x)]
	var fin float32
	span := hi - lo
	if lo > hi { // an empty window: a − lo = a + 1 ≤ 0 never holds
		lo, span = math.MaxUint32, 0
	}
	for j, v := range x {
		fin += v * 0
		a := math.Float32bits(v-b[j]) & 0x7fffffff
		f := math.Float32frombits(a)
		mags[j] = f
		gt := int((uint64(hi) - uint64(a)) >> 63)
		abv[k] = f
		k += gt
		if a-lo <= span {
			cands = append(cands, a)
		}
	}
	return int64(k), k, cands, fin == fin
}

// sumMags returns Σ mags as (Σ over even j) + (Σ over odd j) and Σ abv,
// each accumulated in float64 in index order from +0: countChunk's sums.
// The three chains advance together, one add each per iteration.
func sumMags(mags, abv []float32) (total, sumAbove float64) {
	var s0, s1, sa float64
	n2 := len(mags) / 2
	m := min(n2, len(abv))
	mg := mags[:2*n2]
	ab := abv[:m]
	for i := range ab {
		s0 += float64(mg[2*i])
		s1 += float64(mg[2*i+1])
		sa += float64(ab[i])
	}
	for i := m; i < n2; i++ {
		s0 += float64(mg[2*i])
		s1 += float64(mg[2*i+1])
	}
	for _, v := range abv[m:] {
		sa += float64(v)
	}
	if len(mags)%2 == 1 {
		s0 += float64(mags[len(mags)-1])
	}
	return s0 + s1, sa
}

// sumMags2 is sumMags of (ma, aa) and of (mb, ab) in one loop (len(ma) =
// len(mb)): six independent chains, each in sumMags' order.
func sumMags2(ma, aa, mb, ab []float32) (ta, sa, tb, sb float64) {
	n := len(ma)
	mb = mb[:n]
	n2 := n / 2
	var a0, a1, b0, b1, as, bs float64
	m1 := min(n2, len(aa), len(ab))
	i := 0
	for ; i < m1; i++ {
		a0 += float64(ma[2*i])
		a1 += float64(ma[2*i+1])
		b0 += float64(mb[2*i])
		b1 += float64(mb[2*i+1])
		as += float64(aa[i])
		bs += float64(ab[i])
	}
	for ; i < n2; i++ {
		a0 += float64(ma[2*i])
		a1 += float64(ma[2*i+1])
		b0 += float64(mb[2*i])
		b1 += float64(mb[2*i+1])
		if i < len(aa) {
			as += float64(aa[i])
		}
		if i < len(ab) {
			bs += float64(ab[i])
		}
	}
	for _, v := range aa[min(i, len(aa)):] {
		as += float64(v)
	}
	for _, v := range ab[min(i, len(ab)):] {
		bs += float64(v)
	}
	if n%2 == 1 {
		a0 += float64(ma[n-1])
		b0 += float64(mb[n-1])
	}
	return a0 + a1, as, b0 + b1, bs
}
