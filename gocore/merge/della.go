package merge

import (
	"slices"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/topk"
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
func init() {
	register(Method{Name: "della", Sparsify: magprune{}, Combine: disjointMean{}, Rows: true})
	register(Method{Name: "della_linear", Sparsify: magprune{}, Combine: weightedSum{}, Rows: true})
}

// magprune is DELLA's rank-dependent random drop and rescale.
type magprune struct{}

func (magprune) usesDensity() bool { return true }

func (magprune) prepare(e *engine, units []int) error {
	return e.prepareRescale(units, func(e *engine, m int, ch chunkRef, tau []float32) {
		dellaMask(e, m, ch, tau, 1)
	})
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

// dellaScratch holds the sort buffers of one workspace.
type dellaScratch struct {
	keys, tmp []uint64
	rank      []int32
}

var dellaScratchPool sync.Pool

// dellaPool returns sort buffers for rows of up to n entries.
func dellaPool(n int) *dellaScratch {
	sc, _ := dellaScratchPool.Get().(*dellaScratch)
	if sc == nil || len(sc.keys) < n {
		sc = &dellaScratch{keys: make([]uint64, n), tmp: make([]uint64, n), rank: make([]int32, n)}
	}
	return sc
}

func (magprune) apply(e *engine, m int, ch chunkRef, tau []float32) {
	dellaMask(e, m, ch, tau, e.rescaleFactor(ch.ti, m))
}

// dellaMask zeroes the entries DELLA drops from chunk ch of model m's τ
// and multiplies the kept ones by scale.
func dellaMask(e *engine, m int, ch chunkRef, tau []float32, scale float32) {
	d := e.density(m)
	if d >= 1 {
		return
	}
	eps := e.p.epsilon(m)
	lo := float32(d - eps)
	span := 2 * float32(eps)
	g := &e.geom[ch.ti]
	cols := g.cols
	key := rng.Key(e.p.Seed, e.tensors[ch.ti].Name, m)
	// The workspace holding tau is in use by this goroutine; the sort
	// buffers come from a pool of their own.
	sc := dellaPool(cols)
	defer dellaScratchPool.Put(sc)
	den := float32(cols - 1)
	for r := ch.r0; r < ch.r1; r++ {
		row := tau[(r-ch.r0)*cols : (r-ch.r0+1)*cols]
		rank := rankRow(row, sc)
		base := uint64(r * cols)
		for j, x := range row {
			rn := float32(0.5)
			if cols > 1 {
				rn = float32(rank[j]) / den
			}
			p := lo + float32(rn*span)
			if rng.Uniform(key, base+uint64(j)) < p {
				row[j] = x * scale
			} else {
				row[j] = 0
			}
		}
	}
}

// rankRow returns each entry's ascending rank by |x| (ties by lower index):
// a sort of (|x| bits, index) keys, by LSD radix for all but short rows
// (8-bit digits below 4096 entries, where 2048 counters would cost more
// than the row, 11-bit ones above).
func rankRow(row []float32, sc *dellaScratch) []int32 {
	n := len(row)
	keys, tmp, rank := sc.keys[:n], sc.tmp[:n], sc.rank[:n]
	for j, x := range row {
		keys[j] = uint64(topk.AbsBits(x))<<32 | uint64(j)
	}
	switch {
	case n <= 64:
		slices.Sort(keys)
	case n < 4096:
		keys = radixByMagnitude(keys, tmp, 8)
	default:
		keys = radixByMagnitude(keys, tmp, 11)
	}
	for pos, k := range keys {
		rank[uint32(k)] = int32(pos)
	}
	return rank
}

// radixByMagnitude sorts (|x| bits << 32 | index) keys by their magnitude
// bits (32–62) with stable counting sorts on width-bit digits, skipping a
// digit that every key shares; it returns whichever of keys and tmp holds
// the result.
func radixByMagnitude(keys, tmp []uint64, width uint) []uint64 {
	var countBuf [1 << 11]int
	count := countBuf[:1<<width]
	mask := uint64(1)<<width - 1
	n := len(keys)
	for shift := uint(32); shift < 63; shift += width {
		clear(count)
		for _, k := range keys {
			count[(k>>shift)&mask]++
		}
		if count[(keys[0]>>shift)&mask] == n {
			continue // one digit value: the pass would not move anything
		}
		sum := 0
		for i, c := range count {
			count[i] = sum
			sum += c
		}
		for _, k := range keys {
			d := (k >> shift) & mask
			tmp[count[d]] = k
			count[d]++
		}
		keys, tmp = tmp, keys
	}
	return keys
}
