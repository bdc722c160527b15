package merge

import (
	"fmt"
	"unsafe"

	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// DELLA-Merging (Deep, Bhatia et al., "DELLA-Merging: Reducing Interference
// in Model Merging through Magnitude-Based Sampling", 2024, §3 MAGPRUNE,
// eqs. 1–3): per row of the task vector, entries are ranked by |τ| and kept
// with a probability that rises linearly with the rank, from density−ε for
// the smallest to density+ε for the largest; with Rescale (the default, as
// in mergekit) the kept entries are multiplied by one factor per tensor and
// model that restores the task vector's L1 norm (rescale.go; the paper
// divides each by its own probability instead). Then TIES' elect and disjoint mean (`della`) or task
// arithmetic (`della_linear`), scaled by λ (mergekit's `lambda`).
//
// In a row of n entries the entry of ascending rank r (0 for the smallest,
// ties by lower index) gets, in float32 as mergekit computes it,
//
//	p = float32(density − ε) + (r / (n−1))·(2ε)
//
// (p = density − ε + ε when n = 1) and is kept when
// rng.Uniform(rng.Key(seed, name, m), i) < p, i its index in the tensor's
// neuron layout. A row is a neuron: rows of a transposed tensor are its
// columns, conv kernels are rows of in·kh·kw, a 1-D tensor is one row.
// The decisions are made without sorting the row (della_rows.go), with the
// results of the definition bit for bit; the rescale sums are taken over 8
// lanes per chunk (dellaAbsSum).
func init() {
	register(Method{Name: "della", Sparsify: magprune{}, Combine: disjointMean{}, Rows: true})
	register(Method{Name: "della_linear", Sparsify: magprune{}, Combine: weightedSum{}, Rows: true})
}

// magprune is DELLA's rank-dependent random drop and rescale.
type magprune struct{}

func (magprune) usesDensity() bool { return true }

// prepare computes the rescale factors (nothing without Rescale). The keep
// bits of every chunk and model are kept in e.sp.della for the merge pass,
// which drops them once applied: a bit per entry, 1/32 of the models' bytes
// at most (all of them when every tensor is prepared before the first
// merges, else one tensor's).
func (magprune) prepare(e *engine, units []int) error {
	if !e.p.Rescale {
		return nil
	}
	if e.sp.della == nil {
		e.sp.della = make([][]uint64, len(e.chunks)*e.T)
	}
	err := e.prepareRescaleChunks(units, func(ch chunkRef, ws *workspace, acc []float64) error {
		base, err := e.loadBase(ch, ws)
		if err != nil {
			return err
		}
		n := ch.hi - ch.lo
		for m := range e.T {
			mv := e.view(e.tensors[ch.ti].Models[m], ch, ws, ws.models[m])
			tau := ws.taus[m][:n]
			// The next model's chunk, read where it is stored, is touched
			// while this one's rows are decided (below).
			var next []float32
			if m+1 < e.T && !e.geom[ch.ti].transposed {
				if v := e.tensors[ch.ti].Models[m+1]; v.DType == tensor.F32 {
					next = v.F32[ch.lo:ch.hi]
				}
			}
			if dellaByRows && e.density(m) < 1 && e.geom[ch.ti].cols%8 == 0 {
				// Rows of a multiple of 8: the sums' lanes run on from row
				// to row, and each row is taken whole while it is at hand.
				words := make([]uint64, (n+63)/64)
				before, after, ok := dellaChunkRows(e, m, ch, tau, mv, base, words, next)
				if !ok {
					return e.nonFinite(ch, fmt.Sprintf("model %d", m), mv)
				}
				e.sp.della[ch.gc*e.T+m] = words
				acc[2*m], acc[2*m+1] = before, after
				continue
			}
			before, ok := dellaSubAbsSum(tau, mv, base)
			if !ok {
				return e.nonFinite(ch, fmt.Sprintf("model %d", m), mv)
			}
			acc[2*m], acc[2*m+1] = before, before
			if e.density(m) < 1 {
				words := make([]uint64, (n+63)/64)
				dellaChunkBits(e, m, ch, tau, words, next)
				e.sp.della[ch.gc*e.T+m] = words
				acc[2*m+1] = dellaKeptAbsSum(tau, words)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Every input of the units was loaded and checked for NaN and ±Inf:
	// the merge pass need not check them again.
	if e.checked == nil {
		e.checked = make([]bool, len(e.units()))
	}
	for _, u := range units {
		e.checked[u] = true
	}
	return nil
}

func (magprune) check(e *engine) error {
	for m := range e.T {
		eps := e.p.epsilon(m) // its range is the spec table's; the pair's is checked here
		d := e.density(m)
		if !(d > 0 && d < 1) {
			continue // density 1 keeps everything; others fail the density check
		}
		if !(d-eps > 0 && d+eps < 1) { // mergekit's bounds
			return inputErr("density ± epsilon must lie in (0, 1): density %v, epsilon %v", d, eps)
		}
	}
	return nil
}

func (magprune) apply(e *engine, m int, ch chunkRef, tau []float32) {
	if e.density(m) >= 1 {
		return
	}
	var words []uint64
	if e.sp.della != nil { // prepared: each chunk and model is applied once
		k := ch.gc*e.T + m
		words, e.sp.della[k] = e.sp.della[k], nil
	}
	if words == nil {
		sc := dellaPool(0)
		defer dellaScratchPool.Put(sc)
		nw := (len(tau) + 63) / 64
		if cap(sc.chunkWords) < nw {
			sc.chunkWords = make([]uint64, nw)
		}
		words = sc.chunkWords[:nw]
		clear(words)
		dellaChunkBits(e, m, ch, tau, words, nil)
	}
	dellaApplyBits(tau, words, e.rescaleFactor(ch.ti, m))
}

// dellaRowSetup returns what deciding the rows of chunk ch of model m
// needs: row buffers from the pool (the workspace holding τ is in use by
// this goroutine; put them back with dellaScratchPool.Put), the draw's
// stream key, the threshold table of the model's density ± ε over a row,
// and the row length.
func dellaRowSetup(e *engine, m int, ch chunkRef) (sc *dellaScratch, key uint64, thr []uint32, cols int) {
	d, eps := e.density(m), e.p.epsilon(m)
	lo, span := float32(d-eps), 2*float32(eps)
	cols = e.geom[ch.ti].cols
	sc = dellaPool(cols)
	return sc, rng.Key(e.p.Seed, e.tensors[ch.ti].Name, m), sc.thresholds(cols, lo, span), cols
}

// dellaChunkBits ORs into words (bit j for entry j of the chunk) the keep
// bits of chunk ch of model m's τ, row by row (della_rows.go). After each
// row it touches a share of next's cache lines (nil: none), so that the
// next input the caller reads is on its way while the rows are worked on.
func dellaChunkBits(e *engine, m int, ch chunkRef, tau []float32, words []uint64, next []float32) {
	sc, key, thr, cols := dellaRowSetup(e, m, ch)
	defer dellaScratchPool.Put(sc)
	rows := ch.r1 - ch.r0
	for r := ch.r0; r < ch.r1; r++ {
		off := (r - ch.r0) * cols
		sc.touchShare(next, r-ch.r0, rows)
		row := tau[off : off+cols]
		if off&63 == 0 { // the row starts a word: its bits go in place
			sc.rowBits(row, key, uint64(r*cols), thr, words[off>>6:])
		} else {
			sc.rowBits(row, key, uint64(r*cols), thr, sc.words)
			orBitsAt(words, off, sc.words, cols)
		}
	}
}

// dellaByRows: chunks of rows of a multiple of 8 are prepared by
// dellaChunkRows (the tests compare it with the passes over the chunk),
// where its loops are at least as fast as the passes' (dellaRowsFast).
var dellaByRows = dellaRowsFast

// dellaChunkRows is, for rows of a multiple of 8 entries, dellaSubAbsSum
// of tau = x − b, dellaChunkBits and dellaKeptAbsSum of the chunk, a row at
// a time: per row one pass for τ, its keys and its |τ| (dellaSubKeys), the
// decisions (rowKeyBits) and the kept |τ| (dellaKeptAbsAdd) while the row
// is in the cache; a sum's lane l takes the entries j ≡ l (mod 8) of the
// chunk in index order, as over the whole chunk, so the sums are the same
// bits. It returns the sums before and after the drop, or false when x
// holds a NaN or ±Inf.
func dellaChunkRows(e *engine, m int, ch chunkRef, tau, x, b []float32, words []uint64, next []float32) (before, after float64, ok bool) {
	sc, key, thr, cols := dellaRowSetup(e, m, ch)
	defer dellaScratchPool.Put(sc)
	rows := ch.r1 - ch.r0
	var accB, accA [8]float64
	// The kept sum of a row is taken in the next row's first pass
	// (dellaSubKeysKept), the last row's after the loop.
	var prev []float32
	var prevBits []uint64
	for r := ch.r0; r < ch.r1; r++ {
		off := (r - ch.r0) * cols
		sc.touchShare(next, r-ch.r0, rows)
		row := tau[off : off+cols]
		var kmin, kmax uint32
		var fin bool
		if prev == nil {
			kmin, kmax, fin = dellaSubKeys(row, x[off:off+cols], b[off:off+cols], sc.keys[:cols], &accB)
		} else {
			kmin, kmax, fin = dellaSubKeysKept(row, x[off:off+cols], b[off:off+cols], sc.keys[:cols], &accB, prev, prevBits, &accA)
		}
		if !fin {
			return 0, 0, false
		}
		rw := sc.words
		if off&63 == 0 { // the row starts a word: its bits go in place
			rw = words[off>>6:]
		}
		sc.rowKeyBits(cols, kmin, kmax, key, uint64(r*cols), thr, rw)
		if off&63 != 0 {
			orBitsAt(words, off, sc.words, cols)
		}
		prev, prevBits = row, rw // sc.words stays until the next row's first pass
	}
	dellaKeptAbsAdd(prev, prevBits, &accA)
	return dellaLanes(&accB), dellaLanes(&accA), true
}

// dellaLanes adds up a sum's 8 lanes in dellaAbsSum's order.
func dellaLanes(acc *[8]float64) float64 {
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

// touchShare touches share i of rows of next's cache lines (nil: none),
// so that the next input the caller reads is on its way while row i is
// worked on.
func (sc *dellaScratch) touchShare(next []float32, i, rows int) {
	if next != nil {
		sc.sink += dellaTouch(next[len(next)*i/rows : len(next)*(i+1)/rows])
	}
}

// dellaTouch reads one entry per 64-byte line of x (as integers: no
// scalar float instruction) and returns their sum, which the caller keeps
// so that the loads stay.
func dellaTouch(x []float32) uint32 {
	if len(x) == 0 {
		return 0
	}
	u := unsafe.Slice((*uint32)(unsafe.Pointer(&x[0])), len(x))
	var s uint32
	for i := 0; i < len(u); i += 16 {
		s += u[i]
	}
	return s
}
