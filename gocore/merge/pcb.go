package merge

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/topk"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// PCB-merging (Du, Lee, Li et al., "Parameter Competition Balancing for
// Model Merging", NeurIPS 2024, §3.2 eqs. 2–6), as the authors' code
// computes it. Per task row τ_t over the selection unit (a tensor, or the
// whole model with ScopeGlobal) of d entries, sorted ascending:
//
//  1. clip |τ_t| to [sorted[⌊d·q⌋], sorted[⌊d·(1−q) − 1⌋]] (q = 1e-4) and
//     keep the signs: τc_t;
//  2. intra-balancing: exp(T·x²), x the clipped |τ_t| min-max normalised
//     over the row (eq. 2); inter-balancing: tanh(τ_t ⊙ Σ_j τ_j) on the raw
//     task vectors (eq. 3); β_t = intra·inter (eq. 4);
//  3. the cut is sorted(β_t)[⌊d·(1−density)⌋]: β_t is raised to it and
//     min-max normalised to [0, 1], giving s_t (eq. 5: the top `density`
//     fraction keeps nonzero scores);
//  4. τ_m = Σ_t w_t·s_t·τc_t / max(Σ_t s_t, 1e-12), θ₀ + λ·τ_m (eq. 6, the
//     weights w_t being the per-task λ_t of the authors' search).
//
// A min-max normalisation over a constant row gives 0. Normalize is not
// used. exp and tanh are float32 (vec.Exp32, vec.Tanh32: within 2 ulps;
// the authors' and mergekit's torch code is float32 too), so that the
// 8-lane kernels of pcb_amd64.go give the plain build's bits. The
// quantiles take two selections per unit (over every model at once, see
// selectKeys: a histogram pass over the keys as they are made, then a pass
// collecting the keys of the targets' bins) before the merge pass; both
// selections write their keys into one buffer. The second selection's
// keys (β of every entry and model) are kept for the merge pass while they
// fit in pcbKeepBytes, so that exp and tanh run once per entry and model
// instead of twice (see pcbKept).
func init() {
	register(Method{Name: "pcb", Sparsify: keepAll{}, Combine: pcb{}})
}

// pcbQ is the clip quantile q of the authors' code.
const pcbQ = 1e-4

// pcbClearEvery: scalar loops that call math.Exp or math.Log call
// vec.ClearAVXUpper every that many entries, so that they do not run 100×
// slower for the rest of a chunk after an asynchronous preemption (see
// vec.ClearAVXUpper). PCB itself no longer calls them (vec.Exp32 and
// vec.Tanh32 instead); arcee_fusion's loops use it.
const pcbClearEvery = 256

// pcbKeepBytes bounds the memory the β keys kept between preparation and
// the merge pass may take, over all units at once (a variable for the
// tests, which lower it to take the path that scores again).
var pcbKeepBytes int64 = keyCacheBytes

// pcbKept holds, per unit, the order keys of β_t that the preparation's
// second selection computed, for the merge pass (pcb.combine) to decode
// instead of computing exp and tanh again: the same float32 β, bit for bit
// (fromOrderKey inverts orderKey). A unit's keys are dropped once all of
// its chunks are merged; units whose keys would push the total past
// pcbKeepBytes keep none and are scored again when merged.
type pcbKept struct {
	mu    sync.Mutex
	bytes int64 // held now, over all units
	units []pcbUnitKeys
}

// pcbUnitKeys are one unit's kept keys: keys[m] in unit order (chunk c's
// at offs[c]; selectKeys's buffer), or per chunk (chunks, the bracket
// path's), and how many chunks are still to be merged.
type pcbUnitKeys struct {
	keys   [][]uint32
	offs   []int
	chunks *pcbChunkKeys
	bytes  int64
	left   atomic.Int64
}

// pcbChunkKeys are a unit's keys chunk by chunk: chunk c's keys of model
// m are views[c·T+m], cut from bufs[c] (from pcbChunkBufs). A worker takes
// its chunk's buffer from the pool while it writes the keys, so that no
// one goroutine clears or faults in a whole unit's buffer, and hands it
// back once the chunk is merged.
type pcbChunkKeys struct {
	T     int
	views [][]uint32
	bufs  []*[]uint32
}

// pcbChunkBufs recycles the bracket path's per-chunk key buffers
// (*[]uint32).
var pcbChunkBufs sync.Pool

// get cuts chunk c's buffer of T·n keys (from the pool when one there is
// large enough) into its views.
func (ck *pcbChunkKeys) get(c, n int) [][]uint32 {
	need := ck.T * n
	p, _ := pcbChunkBufs.Get().(*[]uint32)
	if p == nil || cap(*p) < need {
		b := make([]uint32, need)
		p = &b
	}
	ck.bufs[c] = p
	v := ck.views[c*ck.T : (c+1)*ck.T]
	for m := range v {
		v[m] = (*p)[m*n : (m+1)*n]
	}
	return v
}

// put hands chunk c's buffer back.
func (ck *pcbChunkKeys) put(c int) {
	if p := ck.bufs[c]; p != nil {
		ck.bufs[c] = nil
		clear(ck.views[c*ck.T : (c+1)*ck.T])
		pcbChunkBufs.Put(p)
	}
}

// putAll hands every chunk's buffer back.
func (ck *pcbChunkKeys) putAll() {
	for c := range ck.bufs {
		ck.put(c)
	}
}

// reserve books room for n bytes of keys, reporting whether it fits.
func (k *pcbKept) reserve(n int64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.bytes+n > pcbKeepBytes {
		return false
	}
	k.bytes += n
	return true
}

// release returns n bytes of the budget.
func (k *pcbKept) release(n int64) {
	k.mu.Lock()
	k.bytes -= n
	k.mu.Unlock()
}

// chunkKeys returns unit u's kept keys and chunk c's offset in them, or nil
// when the unit kept none (or they were dropped).
func (k *pcbKept) chunkKeys(u, c int) ([][]uint32, int) {
	if u >= len(k.units) {
		return nil, 0
	}
	uk := &k.units[u]
	if ck := uk.chunks; ck != nil {
		return ck.views[c*ck.T : (c+1)*ck.T], 0
	}
	if uk.keys == nil {
		return nil, 0
	}
	return uk.keys, uk.offs[c]
}

// merged notes that chunk c of unit u is merged (its buffer, when the
// keys are per chunk, goes back to the pool); after the last one the
// unit's keys are dropped.
func (k *pcbKept) merged(u, c int) {
	uk := &k.units[u]
	if uk.chunks != nil {
		uk.chunks.put(c)
	}
	if uk.left.Add(-1) == 0 {
		putKeyBuf(uk.keys)
		uk.keys, uk.offs, uk.chunks = nil, nil, nil
		k.release(uk.bytes)
	}
}

// pcbCut holds one model's statistics over one unit.
type pcbCut struct {
	lo, hi    float32 // clip bounds of |τ_t|
	cut, bmax float32 // β_t's cut and maximum
}

type pcb struct{}

func (pcb) normalizes(Params) bool { return false }

// ascRank is the rank from the top (1 = largest) of ascending position i
// among d entries.
func ascRank(d, i int64) int64 { return d - i }

func (pcb) prepare(e *engine, which []int) error {
	units := e.units()
	if e.pcb == nil {
		e.pcb = make([][]pcbCut, len(units))
		e.pcbKeys.units = make([]pcbUnitKeys, len(units))
	}
	var big, small []int
	for _, u := range which {
		if units[u].n >= 1<<20 {
			big = append(big, u)
		} else {
			small = append(small, u)
		}
	}
	var fail chunkError
	one := func(u, workers int) {
		if err := e.pcbUnit(units[u], u, workers); err != nil {
			fail.set(units[u].chunks[0].gc, err)
		}
	}
	for _, u := range big {
		one(u, e.p.Pool.Size())
	}
	e.p.Pool.For(len(small), func(_, i int) { one(small[i], 1) })
	return fail.err
}

// pcbUnit computes the clip bounds and β cuts of every model over unit u.
func (e *engine) pcbUnit(un unit, u, workers int) error {
	T := e.T
	cuts := make([]pcbCut, T)
	e.pcb[u] = cuts
	d := un.n
	if d == 0 {
		return nil
	}
	ilo := int64(float64(d) * pcbQ)
	ihi := int64(float64(d)*(1-pcbQ) - 1)
	var buf [][]uint32
	if rLo, rHi := ilo+1, ascRank(d, ihi); max(rLo, rHi) <= pcbTailMax {
		if err := e.pcbClipTails(un, cuts, int(rLo), int(rHi), workers); err != nil {
			return err
		}
	} else {
		var targets []keyTarget
		for m := range T {
			targets = append(targets, keyTarget{m, ascRank(d, ilo)}, keyTarget{m, rHi})
		}
		// The first selection's key buffer (returned with keep) takes the
		// second's keys.
		keys, b, err := e.selectKeys(un.chunks, T, targets, true, nil, workers, func(ch chunkRef, ws *workspace, dst [][]uint32) error {
			_, _, taus, err := e.loadAll(ch, ws)
			if err != nil {
				return err
			}
			pcbAbsKeys(dst, taus, ch.hi-ch.lo)
			return nil
		})
		if err != nil {
			return err
		}
		buf = b
		for m := range T {
			cuts[m].lo = math.Float32frombits(keys[2*m])
			cuts[m].hi = math.Float32frombits(keys[2*m+1])
		}
	}
	var targets []keyTarget
	kcut := make([]int64, T)
	for m := range T {
		icut := int64(float64(d) * (1 - e.density(m)))
		kcut[m] = ascRank(d, icut)
		targets = append(targets, keyTarget{m, kcut[m]}, keyTarget{m, 1})
	}
	size := int64(T) * d * 4
	keep := size <= keyCacheBytes && e.pcbKeys.reserve(size)
	var keys []uint32
	var kept [][]uint32
	var ck *pcbChunkKeys
	var err error
	done := false
	if d >= pcbBracketMin {
		keys, ck, done = e.pcbBetaBracket(un, cuts, kcut, keep, workers)
	}
	if !done {
		keys, kept, err = e.selectKeys(un.chunks, T, targets, keep, buf, workers, e.pcbBetaSrc(cuts))
	} else {
		putKeyBuf(buf)
	}
	if keep {
		if err != nil || (kept == nil && ck == nil) {
			putKeyBuf(kept)
			e.pcbKeys.release(size)
		} else {
			uk := &e.pcbKeys.units[u]
			uk.keys, uk.chunks, uk.bytes = kept, ck, size
			if kept != nil {
				uk.offs = make([]int, len(un.chunks))
				for c := 1; c < len(un.chunks); c++ {
					uk.offs[c] = uk.offs[c-1] + un.chunks[c-1].hi - un.chunks[c-1].lo
				}
			}
			uk.left.Store(int64(len(un.chunks)))
		}
	}
	if err != nil {
		return err
	}
	for m := range T {
		cuts[m].cut = fromOrderKey(keys[2*m])
		cuts[m].bmax = fromOrderKey(keys[2*m+1])
	}
	return nil
}

// pcbBetaSrc is selectKeys's source of β keys for a unit whose clip
// bounds are in cuts.
func (e *engine) pcbBetaSrc(cuts []pcbCut) func(ch chunkRef, ws *workspace, dst [][]uint32) error {
	T := e.T
	return func(ch chunkRef, ws *workspace, dst [][]uint32) error {
		// The first selection checked every input for NaN and ±Inf; τ is
		// made in the kernel from views of the inputs, not stored.
		t := &e.tensors[ch.ti]
		base := e.view(t.Base, ch, ws, ws.base)
		models := ws.views[:T:T]
		for m := range models {
			models[m] = e.view(t.Models[m], ch, ws, ws.models[m])
		}
		pcbBetaKeys(dst, base, models, cuts, ch.hi-ch.lo)
		return nil
	}
}

// pcbTailMax bounds the ranks of the clip quantiles that pcbClipTails
// finds (d·q + 1 entries from either end, q = 1e-4: units of up to about
// 10¹⁰ entries); beyond it, and in the tests that lower it, a radix
// selection over |τ| finds them (a variable for the tests).
var pcbTailMax int64 = 1 << 20

// pcbTails holds, for one model and worker, the rLo smallest and the rHi
// largest |τ| keys seen so far (topk.AbsBits, ≤ 0x7f7fffff for finite
// inputs, so they compare as int32): lo a max-heap, hi a min-heap.
type pcbTails struct {
	lo, hi   []uint32
	rLo, rHi int
}

// thresholds are the keys a new key must be below (tLo) or above (tHi) to
// enter a heap: the heap's root once it is full, else a bound that every
// key passes.
func (t *pcbTails) thresholds() (tLo, tHi int32) {
	tLo, tHi = math.MaxInt32, -1
	if len(t.lo) == t.rLo {
		tLo = int32(t.lo[0])
	}
	if len(t.hi) == t.rHi {
		tHi = int32(t.hi[0])
	}
	return tLo, tHi
}

// add offers key k to both heaps.
func (t *pcbTails) add(k uint32) {
	tLo, tHi := t.thresholds()
	if int32(k) < tLo {
		t.lo = heapPush(t.lo, k, t.rLo, 0) // a max-heap
	}
	if int32(k) > tHi {
		t.hi = heapPush(t.hi, k, t.rHi, ^uint32(0)) // a min-heap
	}
}

// heapPush adds k to the heap h of at most r keys, whose root is the
// largest key x^flip (flip 0: a max-heap; all ones: a min-heap): appended
// while there is room, else in place of the root (which the caller has
// checked k beats). Compares of the flipped keys, no comparison function
// to call.
func heapPush(h []uint32, k uint32, r int, flip uint32) []uint32 {
	if len(h) < r {
		h = append(h, k)
		for i := len(h) - 1; i > 0; {
			p := (i - 1) / 2
			if !(h[i]^flip > h[p]^flip) {
				break
			}
			h[i], h[p] = h[p], h[i]
			i = p
		}
		return h
	}
	h[0] = k
	for i := 0; ; {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if c+1 < len(h) && h[c+1]^flip > h[c]^flip {
			c++
		}
		if !(h[c]^flip > h[i]^flip) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	return h
}

// pcbFiniteKey is the smallest |τ| key of a NaN or ±Inf.
const pcbFiniteKey = 0x7f800000

// pcbTailsScanSubGo offers |x[j] − base[j]| for lo ≤ j < hi to t, or
// reports false at the first non-finite x[j] (base is finite): the
// plain-Go twin of pcbTailsScanSub. A τ whose key is that of a NaN or
// ±Inf is looked at (x checked) whether or not it enters a heap.
func pcbTailsScanSubGo(x, base []float32, t *pcbTails, lo, hi int) bool {
	for j := lo; j < hi; j++ {
		k := topk.AbsBits(x[j] - base[j])
		if k >= pcbFiniteKey && math.Float32bits(x[j])&0x7fffffff >= pcbFiniteKey {
			return false
		}
		if tLo, tHi := t.thresholds(); int32(k) < tLo || int32(k) > tHi {
			t.add(k)
		}
	}
	return true
}

// pcbClipTails finds every model's clip bounds over unit un in one pass
// over its chunks (which also checks the inputs for NaN and ±Inf): per
// worker and model, the rLo smallest and rHi largest |τ| (heaps that a key
// rarely enters once they are full, unless the entries come sorted: then
// every key does, at a logarithmic cost), then over the union of the
// workers' heaps the rLo-th smallest and the rHi-th largest. The same
// values as a selection over every key, whatever the scheduling.
func (e *engine) pcbClipTails(un unit, cuts []pcbCut, rLo, rHi, workers int) error {
	T := e.T
	workers = max(1, min(workers, len(un.chunks)))
	tails := make([][]pcbTails, workers)
	for w := range tails {
		tails[w] = make([]pcbTails, T)
		for m := range tails[w] {
			tails[w][m] = pcbTails{rLo: rLo, rHi: rHi}
		}
	}
	var fail chunkError
	parallel.ForN(len(un.chunks), workers, func(w, c int) {
		ch := un.chunks[c]
		ws := e.workspace()
		defer e.scratch.Put(ws)
		// τ = model − base in the kernel; a model's NaN or ±Inf makes
		// τ's key exceed every finite one, which the kernel checks.
		t := &e.tensors[ch.ti]
		base, err := e.loadBase(ch, ws)
		if err != nil {
			fail.set(ch.gc, err)
			return
		}
		for m := range T {
			x := e.view(t.Models[m], ch, ws, ws.models[m])
			if !pcbTailsScanSub(x, base, &tails[w][m]) {
				fail.set(ch.gc, e.nonFinite(ch, fmt.Sprintf("model %d", m), x))
				return
			}
		}
	})
	if fail.err != nil {
		return fail.err
	}
	var all []uint32
	for m := range T {
		all = all[:0]
		for w := range tails {
			all = append(all, tails[w][m].lo...)
		}
		slices.Sort(all)
		cuts[m].lo = math.Float32frombits(all[rLo-1])
		all = all[:0]
		for w := range tails {
			all = append(all, tails[w][m].hi...)
		}
		slices.Sort(all)
		cuts[m].hi = math.Float32frombits(all[len(all)-rHi])
	}
	return nil
}

// pcbClip is |x| clipped to [lo, hi], as compares and selects (the vector
// twin's blends; for finite x the same as min(max(|x|, lo), hi)).
func pcbClip(x float32, c *pcbCut) float32 {
	v := abs32(x)
	if !(v > c.lo) {
		v = c.lo
	}
	if !(v < c.hi) {
		v = c.hi
	}
	return v
}

// pcbScale is a model's weight s_t for score beta (eq. 5): max(β, cut)
// rescaled from [cut, bmax] to [0, 1]; callers skip it (s_t = 0) when
// bmax ≤ cut.
func pcbScale(beta float32, c *pcbCut) float32 {
	b := c.cut
	if beta > c.cut {
		b = beta
	}
	return (b - c.cut) / (c.bmax - c.cut)
}

// pcbSignedClip is τc: |x| clipped to [lo, hi] with x's sign, 0 for ±0.
func pcbSignedClip(x float32, c *pcbCut) float32 {
	if !(x > 0 || x < 0) { // ±0 (and NaN, which the inputs' check excludes)
		return 0
	}
	v := pcbClip(x, c)
	if x < 0 {
		v = -v
	}
	return v
}

// pcbOut is θ₀ + λ·num / max(den, 1e-12) (eq. 6), the floor a compare and
// select as in the vector kernels.
func pcbOut(base, lam, num, den float32) float32 {
	if !(den > 1e-12) {
		den = 1e-12
	}
	return base + float32(lam*(num/den))
}

// pcbScore is β = exp(T·x²)·tanh(τ·S) for one entry (see the method doc),
// in float32 with vec.Exp32 and vec.Tanh32 (within 2 ulps of the exact
// functions), which the vector kernel (pcb_amd64.go) matches bit for bit.
func pcbScore(tau, s float32, c *pcbCut, T int) float32 {
	var x float32
	if c.hi > c.lo {
		x = (pcbClip(tau, c) - c.lo) / (c.hi - c.lo)
	}
	arg := float32(T) * float32(x*x)
	intra := vec.Exp32(arg)
	inter := vec.Tanh32(float32(tau * s))
	return float32(intra * inter)
}

// pcbAbsKeysGo writes dst[m][j] = |τ_m[j]|'s bits for lo ≤ j < hi: the
// plain-Go twin of pcbAbsKeys.
func pcbAbsKeysGo(dst [][]uint32, taus [][]float32, lo, hi int) {
	for m, tau := range taus {
		for j := lo; j < hi; j++ {
			dst[m][j] = topk.AbsBits(tau[j])
		}
	}
}

// pcbBetaKeysGo writes dst[m][j] = orderKey(β_m[j]) for lo ≤ j < hi, τ_m
// being xs[m] − base or, with base nil, xs[m]: the plain-Go twin of
// pcbBetaKeys.
func pcbBetaKeysGo(dst [][]uint32, base []float32, xs [][]float32, cuts []pcbCut, lo, hi int) {
	T := len(xs)
	var tau [8]float32
	t := tau[:0]
	if T > len(tau) {
		t = make([]float32, 0, T)
	}
	t = t[:T]
	for j := lo; j < hi; j++ {
		var s float32
		for m, x := range xs {
			t[m] = x[j]
			if base != nil {
				t[m] -= base[j]
			}
			s += t[m]
		}
		for m := range xs {
			dst[m][j] = orderKey(pcbScore(t[m], s, &cuts[m], T))
		}
	}
}

// pcbMergeGo is the merge of entries lo ≤ j < hi (eq. 6), τ_m being
// xs[m] − base with sub, else xs[m], and β decoded from keys[m][off+j]:
// the plain-Go twin of pcbMerge. The max of eq. 5 and the 1e-12 floor are
// compares and selects, as the vector twin's blends.
func pcbMergeGo(out, base []float32, xs [][]float32, sub bool, keys [][]uint32, off int, cuts []pcbCut, w []float32, lam float32, lo, hi int) {
	for j := lo; j < hi; j++ {
		var num, den float32
		for m, xm := range xs {
			c := &cuts[m]
			x := xm[j]
			if sub {
				x -= base[j]
			}
			var sc float32
			if c.bmax > c.cut {
				sc = pcbScale(fromOrderKey(keys[m][off+j]), c)
			}
			num += float32(w[m] * float32(sc*pcbSignedClip(x, c)))
			den += sc
		}
		out[j] = pcbOut(base[j], lam, num, den)
	}
}

// pcbMergeScoredGo is pcbMergeGo with β computed (pcbScore, as
// pcbBetaKeysGo computes it) instead of decoded from keys: the same bits,
// orderKey and fromOrderKey being inverses. The plain-Go twin of
// pcbMergeScored's kernel.
func pcbMergeScoredGo(out, base []float32, xs [][]float32, sub bool, cuts []pcbCut, w []float32, lam float32, lo, hi int) {
	T := len(xs)
	var buf [8]float32
	t := buf[:0]
	if T > len(buf) {
		t = make([]float32, 0, T)
	}
	t = t[:T]
	for j := lo; j < hi; j++ {
		var s float32
		for m, x := range xs {
			t[m] = x[j]
			if sub {
				t[m] -= base[j]
			}
			s += t[m]
		}
		var num, den float32
		for m := range xs {
			c := &cuts[m]
			x := t[m]
			var sc float32
			if c.bmax > c.cut {
				sc = pcbScale(pcbScore(x, s, c, T), c)
			}
			num += float32(w[m] * float32(sc*pcbSignedClip(x, c)))
			den += sc
		}
		out[j] = pcbOut(base[j], lam, num, den)
	}
}

// pcbScratch holds the β keys of one chunk for a merge pass whose keys
// were not kept.
var pcbScratch = sync.Pool{New: func() any { return new([][]uint32) }}

func (pcb) combine(e *engine, ch chunkRef, base []float32, _, taus [][]float32, out []float32) {
	pcbMergeChunk(e, ch, base, taus, false, out)
}

// PCB merges straight from the inputs (mergeChunk's direct pass: float32
// inputs read where they are stored, τ made in the kernel, the output
// written in place), the same bits as combine from task-vector buffers.
// The preparation checked every input for NaN and ±Inf.
func (pcb) direct(e *engine, ch chunkRef, base []float32, models [][]float32, out []float32) {
	pcbMergeChunk(e, ch, base, models, true, out)
}

func (pcb) readsBase() bool { return true }

// pcbMergeChunk merges chunk ch into out, τ_m being xs[m] − base with sub,
// else xs[m].
func pcbMergeChunk(e *engine, ch chunkRef, base []float32, xs [][]float32, sub bool, out []float32) {
	u, uc := e.unitChunk(ch)
	cuts := e.pcb[u]
	n := len(out)
	// β from the preparation's keys when they were kept, else computed.
	keys, off := e.pcbKeys.chunkKeys(u, uc)
	if keys == nil && pcbMergeScored(out, base[:n], xs, sub, cuts, e.w, float32(e.p.Lambda)) {
		return
	}
	if keys == nil {
		sp := pcbScratch.Get().(*[][]uint32)
		defer pcbScratch.Put(sp)
		if len(*sp) < len(xs) {
			*sp = make([][]uint32, len(xs))
		}
		keys, off = (*sp)[:len(xs)], 0
		for m := range keys {
			if cap(keys[m]) < n {
				keys[m] = make([]uint32, n)
			}
			keys[m] = keys[m][:n]
		}
		b := base
		if !sub {
			b = nil
		}
		pcbBetaKeys(keys, b, xs, cuts, n)
	} else {
		defer e.pcbKeys.merged(u, uc)
	}
	pcbMerge(out, base[:n], xs, sub, keys, off, cuts, e.w, float32(e.p.Lambda))
}

// orderKey maps a float32 to a uint32 with the same order (for non-NaN x).
func orderKey(x float32) uint32 {
	b := math.Float32bits(x)
	if b>>31 != 0 {
		return ^b
	}
	return b | 1<<31
}

// fromOrderKey inverts orderKey.
func fromOrderKey(k uint32) float32 {
	if k>>31 != 0 {
		return math.Float32frombits(k &^ (1 << 31))
	}
	return math.Float32frombits(^k)
}

// keyTarget asks for the k-th largest key (1 ≤ k ≤ n) of stream s.
type keyTarget struct {
	s int
	k int64
}

// keyCacheBytes bounds the memory selectKeys may use to keep the keys of
// its first pass for the others (instead of calling src again).
const keyCacheBytes = 512 << 20

// keyCollectBytes bounds the memory of selectKeys's collect pass (a
// variable for the tests, which set it to 0 to take the radix passes).
var keyCollectBytes int64 = keyCacheBytes / 4

// keyBins is the number of bins of the first radix pass (the top 11 bits).
const (
	keyTopShift = 21
	keyBins     = 1 << 11
)

// selectKeys finds the keys the targets ask for over the given chunks:
// src writes every stream's keys of a chunk into dst[s] (room for the
// chunk). The first pass histograms the top 11 bits of every stream's
// keys, which places each target in one bin. A second pass then collects
// the keys of those bins (far fewer than all, mostly) and the selection
// ends on them in memory: the k-th largest is a value, whatever order the
// workers collected in. When the bins hold more than keyCollectBytes, two
// radix passes of 11 and 10 bits over every key take the collect pass's
// place. Histograms are per worker and summed in a fixed order, so the
// result does not depend on scheduling. The keys of the first pass are
// kept for the others when they fit in keyCacheBytes, written by src into
// reuse when it has room (PCB's two selections share one buffer) or into a
// new one. The targets of one stream share the first pass's histogram, and
// in the later passes one read of its keys. With keep, the kept keys are
// returned too (per stream, in chunk order; nil when they did not fit).
func (e *engine) selectKeys(chunks []chunkRef, streams int, targets []keyTarget, keep bool, reuse [][]uint32, workers int,
	src func(ch chunkRef, ws *workspace, dst [][]uint32) error) ([]uint32, [][]uint32, error) {
	workers = max(1, min(workers, len(chunks)))
	nt := len(targets)
	prefix := make([]uint32, nt)
	rem := make([]int64, nt)
	for i, t := range targets {
		rem[i] = t.k
	}
	// lead[i] is the first target of target i's stream (the first pass's
	// histogram is the same for all of them).
	lead := make([]int, nt)
	for i, t := range targets {
		lead[i] = i
		for j, u := range targets[:i] {
			if u.s == t.s {
				lead[i] = j
				break
			}
		}
	}
	offs := make([]int, len(chunks)+1)
	for c, ch := range chunks {
		offs[c+1] = offs[c] + ch.hi - ch.lo
	}
	total := offs[len(chunks)]
	var cache [][]uint32
	if int64(streams)*int64(total)*4 <= keyCacheBytes {
		cache = reuse
		if len(cache) != streams || len(cache[0]) != total {
			putKeyBuf(reuse)
			cache = getKeyBuf(streams, total)
		}
	}
	keyBuf := make([][][]uint32, workers)
	views := make([][][]uint32, workers)
	for w := range workers {
		views[w] = make([][]uint32, streams)
		if cache == nil {
			keyBuf[w] = make([][]uint32, streams)
			for s := range streams {
				keyBuf[w][s] = make([]uint32, max(e.maxChunk, 1))
			}
		}
	}
	// chunkKeys returns chunk c's keys for worker w: src writes them into
	// the cache (or the worker's buffer) on the first pass, later passes
	// read the cache (or call src again).
	chunkKeys := func(w, c int, first bool) ([][]uint32, error) {
		ch := chunks[c]
		dst := keyBuf[w]
		if cache != nil {
			dst = views[w]
			for s := range dst {
				dst[s] = cache[s][offs[c]:offs[c+1]]
			}
			if !first {
				return dst, nil
			}
		}
		ws := e.workspace()
		err := src(ch, ws, dst)
		e.scratch.Put(ws)
		if err != nil {
			return nil, err
		}
		return dst, nil
	}

	// Pass 1: the top 11 bits, per stream (its lead target's histogram),
	// two interleaved histograms per worker so that runs of equal bins do
	// not wait on each other's increments.
	hist := make([][]uint32, workers)
	for w := range hist {
		hist[w] = make([]uint32, 2*nt*keyBins)
	}
	var fail chunkError
	parallel.ForN(len(chunks), workers, func(w, c int) {
		dst, err := chunkKeys(w, c, true)
		if err != nil {
			fail.set(chunks[c].gc, err)
			return
		}
		n := chunks[c].hi - chunks[c].lo
		for i, t := range targets {
			if lead[i] != i {
				continue
			}
			h := hist[w][2*i*keyBins : 2*(i+1)*keyBins]
			h0, h1 := h[:keyBins], h[keyBins:]
			keys := dst[t.s][:n]
			j := 0
			for ; j+1 < len(keys); j += 2 {
				h0[keys[j]>>keyTopShift]++
				h1[keys[j+1]>>keyTopShift]++
			}
			if j < len(keys) {
				h0[keys[j]>>keyTopShift]++
			}
		}
	})
	if fail.err != nil {
		return nil, nil, fail.err
	}
	binCount := make([]int64, nt)
	for i := range targets {
		li := lead[i]
		count := func(b int) int64 {
			var c int64
			for w := range hist {
				c += int64(hist[w][2*li*keyBins+b]) + int64(hist[w][(2*li+1)*keyBins+b])
			}
			return c
		}
		b, cum := pickBin(count, keyBins, rem[i])
		rem[i] -= cum
		prefix[i] = uint32(b)
		binCount[i] = count(b)
	}

	// The collect pass, when the targets' bins fit: group[i] is the first
	// target of target i's stream with the same bin (they share one list).
	group := make([]int, nt)
	var collect int64
	for i, t := range targets {
		group[i] = i
		for j, u := range targets[:i] {
			if u.s == t.s && prefix[j] == prefix[i] {
				group[i] = j
				break
			}
		}
		if group[i] == i {
			collect += binCount[i] * 4
		}
	}
	if collect <= keyCollectBytes {
		if err := e.collectKeys(chunks, targets, group, prefix, rem, workers, chunkKeys); err != nil {
			return nil, nil, err
		}
	} else if err := e.radixKeys(chunks, targets, prefix, rem, workers, chunkKeys); err != nil {
		return nil, nil, err
	}
	if !keep {
		putKeyBuf(cache)
		cache = nil
	}
	return prefix, cache, nil
}

// keyBufs recycles selectKeys's key buffers (*[]uint32, cut per stream by
// getKeyBuf): fresh memory costs a page fault per 4 KiB on its first
// write, which took more time than the pass writing the keys.
var keyBufs sync.Pool

// getKeyBuf returns streams buffers of n keys, cut from one recycled
// buffer when keyBufs holds one large enough.
func getKeyBuf(streams, n int) [][]uint32 {
	need := streams * n
	var flat []uint32
	if p, _ := keyBufs.Get().(*[]uint32); p != nil && cap(*p) >= need {
		flat = (*p)[:need]
	} else {
		flat = make([]uint32, need)
	}
	out := make([][]uint32, streams)
	for s := range out {
		// Without a capacity limit: out[0][:cap] is the whole buffer
		// again for putKeyBuf.
		out[s] = flat[s*n : (s+1)*n]
	}
	return out
}

// putKeyBuf hands a getKeyBuf result back to keyBufs (nil: nothing).
func putKeyBuf(b [][]uint32) {
	if len(b) == 0 || cap(b[0]) == 0 {
		return
	}
	flat := b[0][:cap(b[0])]
	keyBufs.Put(&flat)
}

// pickBin walks the bins of a histogram from the top (count(b) keys in
// bin b) to the one holding the rem-th largest key: the bin and how many
// keys lie above it.
func pickBin(count func(b int) int64, bins int, rem int64) (int, int64) {
	var cum int64
	b := bins - 1
	for ; b > 0; b-- {
		c := count(b)
		if cum+c >= rem {
			break
		}
		cum += c
	}
	return b, cum
}

// collectKeys is selectKeys's collect pass: per group, the keys of the
// group's bin (prefix) from every chunk, then each target's rem-th largest
// among them by two radix passes in memory. prefix[i] becomes the key.
func (e *engine) collectKeys(chunks []chunkRef, targets []keyTarget, group []int, prefix []uint32, rem []int64, workers int,
	chunkKeys func(w, c int, first bool) ([][]uint32, error)) error {
	nt := len(targets)
	lists := make([][][]uint32, workers) // [worker][group]
	for w := range lists {
		lists[w] = make([][]uint32, nt)
	}
	// Per stream, the groups to fill.
	type streamGroups struct {
		s      int
		groups []int
	}
	var sg []streamGroups
	for i, t := range targets {
		if group[i] != i {
			continue
		}
		k := -1
		for x := range sg {
			if sg[x].s == t.s {
				k = x
			}
		}
		if k < 0 {
			sg = append(sg, streamGroups{s: t.s})
			k = len(sg) - 1
		}
		sg[k].groups = append(sg[k].groups, i)
	}
	var fail chunkError
	parallel.ForN(len(chunks), workers, func(w, c int) {
		dst, err := chunkKeys(w, c, false)
		if err != nil {
			fail.set(chunks[c].gc, err)
			return
		}
		n := chunks[c].hi - chunks[c].lo
		l := lists[w]
		for _, g := range sg {
			keys := dst[g.s][:n]
			switch len(g.groups) {
			case 1:
				i := g.groups[0]
				l[i], _ = collectBins(keys, prefix[i], 0, false, l[i], nil)
			case 2:
				i, j := g.groups[0], g.groups[1]
				l[i], l[j] = collectBins(keys, prefix[i], prefix[j], true, l[i], l[j])
			default:
				for _, k := range keys {
					for _, i := range g.groups {
						if k>>keyTopShift == prefix[i] {
							l[i] = append(l[i], k)
						}
					}
				}
			}
		}
	})
	if fail.err != nil {
		return fail.err
	}
	// The targets in parallel (the lists of a large bin hold millions of
	// keys), each over its group's lists of every worker.
	parallel.ForN(len(targets), workers, func(_, i int) {
		ls := make([][]uint32, len(lists))
		for w := range lists {
			ls[w] = lists[w][group[i]]
		}
		prefix[i] = kthLargestLow(ls, prefix[i], rem[i])
	})
	return nil
}

// collectBinsGo appends to li the keys whose top 11 bits are p and, with
// two, to lj those whose top 11 bits are q (p ≠ q).
func collectBinsGo(keys []uint32, p, q uint32, two bool, li, lj []uint32) ([]uint32, []uint32) {
	for _, k := range keys {
		switch k >> keyTopShift {
		case p:
			li = append(li, k)
		case q:
			if two {
				lj = append(lj, k)
			}
		}
	}
	return li, lj
}

// kthLargestLow is the rem-th largest of the keys of lists, which all
// have the top 11 bits top, by radix passes over their low 21 bits (11,
// then 10).
func kthLargestLow(lists [][]uint32, top uint32, rem int64) uint32 {
	var h [keyBins]int64
	p := top
	for _, ps := range [...]struct{ shift, width uint }{{10, 11}, {0, 10}} {
		clear(h[:])
		mask := uint32(1)<<ps.width - 1
		for _, keys := range lists {
			for _, k := range keys {
				if k>>(ps.shift+ps.width) == p {
					h[(k>>ps.shift)&mask]++
				}
			}
		}
		b, cum := pickBin(func(b int) int64 { return h[b] }, 1<<ps.width, rem)
		rem -= cum
		p = p<<ps.width | uint32(b)
	}
	return p
}

// radixKeys is selectKeys's fallback for bins too large to collect: two
// radix passes (11 and 10 bits) over every key, counting the keys under
// each target's prefix; a stream's two targets share one read of its keys.
// prefix[i] becomes the key.
func (e *engine) radixKeys(chunks []chunkRef, targets []keyTarget, prefix []uint32, rem []int64, workers int,
	chunkKeys func(w, c int, first bool) ([][]uint32, error)) error {
	nt := len(targets)
	// pair[i] is the other target of a stream that has exactly two (−1
	// otherwise).
	pair := make([]int, nt)
	for i, t := range targets {
		pair[i] = -1
		var same []int
		for j, u := range targets {
			if u.s == t.s {
				same = append(same, j)
			}
		}
		if len(same) == 2 {
			pair[i] = same[0] + same[1] - i
		}
	}
	hist := make([][]uint32, workers)
	for w := range hist {
		hist[w] = make([]uint32, nt*keyBins)
	}
	for _, ps := range [...]struct{ shift, width uint }{{10, 11}, {0, 10}} {
		for w := range hist {
			clear(hist[w])
		}
		var fail chunkError
		parallel.ForN(len(chunks), workers, func(w, c int) {
			dst, err := chunkKeys(w, c, false)
			if err != nil {
				fail.set(chunks[c].gc, err)
				return
			}
			n := chunks[c].hi - chunks[c].lo
			h := hist[w]
			mask := uint32(1)<<ps.width - 1
			ps0 := ps.shift + ps.width
			for i, t := range targets {
				ht := h[i*keyBins : (i+1)*keyBins]
				keys := dst[t.s][:n]
				switch {
				case pair[i] > i:
					j := pair[i]
					hj := h[j*keyBins : (j+1)*keyBins]
					pre, prj := prefix[i], prefix[j]
					for _, k := range keys {
						if k>>ps0 == pre {
							ht[(k>>ps.shift)&mask]++
						}
						if k>>ps0 == prj {
							hj[(k>>ps.shift)&mask]++
						}
					}
				case pair[i] >= 0:
					// Counted with its pair.
				default:
					pre := prefix[i]
					for _, k := range keys {
						if k>>ps0 == pre {
							ht[(k>>ps.shift)&mask]++
						}
					}
				}
			}
		})
		if fail.err != nil {
			return fail.err
		}
		for i := range targets {
			count := func(b int) int64 {
				var c int64
				for w := range hist {
					c += int64(hist[w][i*keyBins+b])
				}
				return c
			}
			b, cum := pickBin(count, 1<<ps.width, rem[i])
			rem[i] -= cum
			prefix[i] = prefix[i]<<ps.width | uint32(b)
		}
	}
	return nil
}
