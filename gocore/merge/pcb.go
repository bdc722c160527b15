package merge

import (
	"math"
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
// used. The quantiles take two three-pass radix selections per unit (over
// every model at once) before the merge pass. The second selection's keys
// (β of every entry and model) are kept for the merge pass while they fit
// in pcbKeepBytes, so that exp and tanh run once per entry and model
// instead of twice (see pcbKept).
func init() {
	register(Method{Name: "pcb", Sparsify: keepAll{}, Combine: pcb{}})
}

// pcbQ is the clip quantile q of the authors' code.
const pcbQ = 1e-4

// pcbClearEvery: the scoring loops call vec.ClearAVXUpper every that many
// entries, so that math.Exp does not run 100× slower for the rest of a
// chunk after an asynchronous preemption (see vec.ClearAVXUpper).
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
// at offs[c]), and how many chunks are still to be merged.
type pcbUnitKeys struct {
	keys  [][]uint32
	offs  []int
	bytes int64
	left  atomic.Int64
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
	if uk.keys == nil {
		return nil, 0
	}
	return uk.keys, uk.offs[c]
}

// merged notes that one chunk of unit u is merged; after the last one the
// unit's keys are dropped.
func (k *pcbKept) merged(u int) {
	uk := &k.units[u]
	if uk.left.Add(-1) == 0 {
		uk.keys, uk.offs = nil, nil
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
	var targets []keyTarget
	for m := range T {
		ilo := int64(float64(d) * pcbQ)
		ihi := int64(float64(d)*(1-pcbQ) - 1)
		targets = append(targets, keyTarget{m, ascRank(d, ilo)}, keyTarget{m, ascRank(d, ihi)})
	}
	keys, _, err := e.selectKeys(un.chunks, T, targets, false, workers, func(ch chunkRef, ws *workspace, dst [][]uint32) error {
		_, _, taus, err := e.loadAll(ch, ws)
		if err != nil {
			return err
		}
		for m, tau := range taus {
			k := dst[m][:len(tau)]
			for j, x := range tau {
				k[j] = topk.AbsBits(x)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for m := range T {
		cuts[m].lo = math.Float32frombits(keys[2*m])
		cuts[m].hi = math.Float32frombits(keys[2*m+1])
	}
	targets = targets[:0]
	for m := range T {
		icut := int64(float64(d) * (1 - e.density(m)))
		targets = append(targets, keyTarget{m, ascRank(d, icut)}, keyTarget{m, 1})
	}
	size := int64(T) * d * 4
	keep := size <= keyCacheBytes && e.pcbKeys.reserve(size)
	keys, kept, err := e.selectKeys(un.chunks, T, targets, keep, workers, func(ch chunkRef, ws *workspace, dst [][]uint32) error {
		_, _, taus, err := e.loadAll(ch, ws)
		if err != nil {
			return err
		}
		n := ch.hi - ch.lo
		for j := range n {
			if j%pcbClearEvery == 0 {
				vec.ClearAVXUpper()
			}
			s := pcbSum(taus, j)
			for m, tau := range taus {
				dst[m][j] = orderKey(pcbScore(tau[j], s, &cuts[m], T))
			}
		}
		return nil
	})
	if keep {
		if err != nil || kept == nil {
			e.pcbKeys.release(size)
		} else {
			uk := &e.pcbKeys.units[u]
			uk.keys, uk.bytes = kept, size
			uk.offs = make([]int, len(un.chunks))
			for c := 1; c < len(un.chunks); c++ {
				uk.offs[c] = uk.offs[c-1] + un.chunks[c-1].hi - un.chunks[c-1].lo
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

// pcbSum is Σ_t τ_t[j] in model order.
func pcbSum(taus [][]float32, j int) float32 {
	var s float32
	for _, tau := range taus {
		s += tau[j]
	}
	return s
}

// pcbClip is |x| clipped to [lo, hi].
func pcbClip(x float32, c *pcbCut) float32 {
	return min(max(abs32(x), c.lo), c.hi)
}

// pcbScore is β = exp(T·x²)·tanh(τ·S) for one entry (see the method doc),
// the transcendentals in float64 rounded to float32.
func pcbScore(tau, s float32, c *pcbCut, T int) float32 {
	var x float32
	if c.hi > c.lo {
		x = (pcbClip(tau, c) - c.lo) / (c.hi - c.lo)
	}
	arg := float32(T) * float32(x*x)
	intra := float32(math.Exp(float64(arg)))
	inter := float32(math.Tanh(float64(tau * s)))
	return intra * inter
}

func (pcb) combine(e *engine, ch chunkRef, base []float32, _, taus [][]float32, out []float32) {
	u, uc := e.unitChunk(ch)
	cuts := e.pcb[u]
	T := e.T
	lam := float32(e.p.Lambda)
	// β from the preparation's keys when they were kept, else computed.
	keys, off := e.pcbKeys.chunkKeys(u, uc)
	for j, b := range base[:len(out)] {
		if keys == nil && j%pcbClearEvery == 0 {
			vec.ClearAVXUpper()
		}
		s := pcbSum(taus, j)
		var num, den float32
		for m, tau := range taus {
			c := &cuts[m]
			x := tau[j]
			var sc float32
			if c.bmax > c.cut {
				var beta float32
				if keys != nil {
					beta = fromOrderKey(keys[m][off+j])
				} else {
					beta = pcbScore(x, s, c, T)
				}
				sc = (max(beta, c.cut) - c.cut) / (c.bmax - c.cut)
			}
			tc := pcbClip(x, c)
			if x < 0 {
				tc = -tc
			} else if x == 0 {
				tc = 0
			}
			num += e.w[m] * float32(sc*tc)
			den += sc
		}
		out[j] = b + lam*(num/max(den, 1e-12))
	}
	if keys != nil {
		e.pcbKeys.merged(u)
	}
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
// its first pass for the other two (instead of calling src again).
const keyCacheBytes = 512 << 20

// selectKeys finds the keys the targets ask for over the given chunks:
// src writes every stream's keys of a chunk into dst[s] (room for the
// chunk). Three passes of 11, 11 and 10 bits, each over every stream and
// target at once; the keys of the first pass are kept for the others when
// they fit in keyCacheBytes. Histograms are per worker and per target,
// summed in a fixed order, so the result does not depend on scheduling.
// The targets of one stream share the first pass's histogram, and a
// stream's two targets (PCB asks for two quantiles per model) share one
// read of its keys in the later passes. With keep, the kept keys are returned too (per stream, in chunk order;
// nil when they did not fit).
func (e *engine) selectKeys(chunks []chunkRef, streams int, targets []keyTarget, keep bool, workers int,
	src func(ch chunkRef, ws *workspace, dst [][]uint32) error) ([]uint32, [][]uint32, error) {
	const bins = 1 << 11
	workers = max(1, min(workers, len(chunks)))
	nt := len(targets)
	prefix := make([]uint32, nt)
	rem := make([]int64, nt)
	for i, t := range targets {
		rem[i] = t.k
	}
	// lead[i] is the first target of target i's stream (the first pass's
	// histogram is the same for all of them); pair[i] the other target of
	// a stream that has exactly two (−1 otherwise), whose later passes
	// share one read of the keys.
	lead := make([]int, nt)
	pair := make([]int, nt)
	for i, t := range targets {
		lead[i], pair[i] = i, -1
		var same []int
		for j, u := range targets {
			if u.s == t.s {
				same = append(same, j)
			}
		}
		lead[i] = same[0]
		if len(same) == 2 {
			pair[i] = same[0] + same[1] - i
		}
	}
	offs := make([]int, len(chunks)+1)
	for c, ch := range chunks {
		offs[c+1] = offs[c] + ch.hi - ch.lo
	}
	var cache [][]uint32
	if int64(streams)*int64(offs[len(chunks)])*4 <= keyCacheBytes {
		cache = make([][]uint32, streams)
		for s := range cache {
			cache[s] = make([]uint32, offs[len(chunks)])
		}
	}
	keyBuf := make([][][]uint32, workers)
	views := make([][][]uint32, workers)
	hist := make([][]uint32, workers)
	for w := range workers {
		views[w] = make([][]uint32, streams)
		keyBuf[w] = make([][]uint32, streams)
		for s := range streams {
			keyBuf[w][s] = make([]uint32, max(e.maxChunk, 1))
		}
		hist[w] = make([]uint32, nt*bins)
	}
	passes := []struct{ shift, width uint }{{21, 11}, {10, 11}, {0, 10}}
	for p, ps := range passes {
		for w := range hist {
			clear(hist[w])
		}
		var fail chunkError
		parallel.ForN(len(chunks), workers, func(w, c int) {
			ch := chunks[c]
			n := ch.hi - ch.lo
			dst := keyBuf[w]
			switch {
			case cache != nil && p > 0:
				dst = views[w]
				for s := range dst {
					dst[s] = cache[s][offs[c]:offs[c+1]]
				}
			default:
				ws := e.workspace()
				err := src(ch, ws, dst)
				e.scratch.Put(ws)
				if err != nil {
					fail.set(ch.gc, err)
					return
				}
				if cache != nil {
					for s := range dst {
						copy(cache[s][offs[c]:offs[c+1]], dst[s][:n])
					}
				}
			}
			h := hist[w]
			mask := uint32(1)<<ps.width - 1
			ps0 := ps.shift + ps.width
			for i, t := range targets {
				ht := h[i*bins : (i+1)*bins]
				keys := dst[t.s][:n]
				switch {
				case p == 0 && lead[i] != i:
					// The first pass's histogram is the stream's: the
					// target's lead target counts it.
				case p == 0:
					for _, k := range keys {
						ht[k>>ps.shift]++
					}
				case pair[i] > i:
					// Two targets of one stream: one read of its keys.
					j := pair[i]
					hj := h[j*bins : (j+1)*bins]
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
			return nil, nil, fail.err
		}
		for i := range targets {
			hi := i // whose histogram target i reads
			if p == 0 {
				hi = lead[i]
			}
			var cum int64
			b := int(1)<<ps.width - 1
			for ; b > 0; b-- {
				var c int64
				for w := range hist {
					c += int64(hist[w][hi*bins+b])
				}
				if cum+c >= rem[i] {
					break
				}
				cum += c
			}
			rem[i] -= cum
			prefix[i] = prefix[i]<<ps.width | uint32(b)
		}
	}
	if !keep {
		cache = nil
	}
	return prefix, cache, nil
}
