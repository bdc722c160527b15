// Package topk selects the k largest-magnitude entries of a tensor, or of
// several tensors taken together, without sorting them.
//
// The selection is the one METHODS.md defines: exactly k = ⌊density·n⌋
// entries of largest |x|, ties broken by lower index (for a multi-tensor
// scope, by position in the concatenation of the tensors in the order given).
//
// The threshold is found by a two-pass radix select over the IEEE-754 bit
// patterns of |x| (which order like the magnitudes for finite values): a
// histogram of the high 16 bits, then of the low 16 bits inside the chosen
// bucket. A third pass counts ties per chunk only when some, but not all,
// entries equal to the threshold are kept. Cost: O(n) reads per pass and
// 2·65536 counters per goroutine; inputs of at most SmallN entries are
// sorted instead.
package topk

import (
	"math"
	"slices"

	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// SmallN is the size up to which Select sorts instead of building histograms.
const SmallN = 4096

// Source writes |x| as float32 bit patterns (sign bit cleared) for the
// entries of chunk c into dst, which has room for parallel.Chunk values, and
// returns the filled prefix. The caller of Select defines what a chunk is;
// chunks are visited in any order and possibly concurrently.
type Source func(c int, dst []uint32) []uint32

// Cut is the outcome of a selection: an entry is kept when its magnitude bits
// exceed Bits, or equal Bits and it is among the first Allow(c) such entries
// of its chunk c.
type Cut struct {
	// None is set when k = 0: nothing is kept.
	None bool
	// All is set when k ≥ n: everything is kept.
	All bool
	// Bits is the float32 bit pattern of the k-th largest magnitude.
	Bits uint32
	// ties holds, per chunk, how many entries equal to Bits are kept; nil
	// when all of them are.
	ties []int32
}

// Allow is how many entries with magnitude bits equal to Bits chunk c keeps,
// first by index; -1 means all of them.
func (c *Cut) Allow(chunk int) int {
	if c.ties == nil {
		return -1
	}
	return int(c.ties[chunk])
}

// Threshold is the k-th largest magnitude as a float32 (0 when None).
func (c *Cut) Threshold() float32 { return math.Float32frombits(c.Bits) }

// Select finds the cut that keeps the k largest of n magnitudes spread over
// nChunks chunks read through src, using up to workers goroutines (1 runs
// everything on the calling goroutine). src is called two or three times
// per chunk.
func Select(k, n int64, nChunks int, src Source, workers int) Cut {
	switch {
	case k <= 0:
		return Cut{None: true}
	case k >= n:
		return Cut{All: true}
	}
	var bits uint32
	var gt, eq int64
	if n <= SmallN {
		bits, gt, eq = selectSmall(k, nChunks, src)
	} else {
		bits, gt, eq = selectRadix(k, nChunks, src, workers)
	}
	cut := Cut{Bits: bits}
	keepTies := k - gt
	if keepTies < eq {
		cut.ties = allowances(bits, keepTies, nChunks, src, workers)
	}
	return cut
}

// selectSmall sorts all magnitudes; it returns the threshold bits, how many
// entries exceed it and how many equal it.
func selectSmall(k int64, nChunks int, src Source) (uint32, int64, int64) {
	buf := make([]uint32, parallel.Chunk)
	var all []uint32
	for c := 0; c < nChunks; c++ {
		all = append(all, src(c, buf)...)
	}
	slices.Sort(all)
	b := all[int64(len(all))-k]
	var gt, eq int64
	for _, m := range all {
		if m > b {
			gt++
		} else if m == b {
			eq++
		}
	}
	return b, gt, eq
}

// selectRadix runs the two histogram passes.
func selectRadix(k int64, nChunks int, src Source, workers int) (uint32, int64, int64) {
	hist := histogram(nChunks, src, workers, func(m uint32) (uint32, bool) { return m >> 16, true })
	hi, above := pick(hist, k)
	hist = histogram(nChunks, src, workers, func(m uint32) (uint32, bool) { return m & 0xffff, m>>16 == hi })
	lo, above2 := pick(hist, k-above)
	return hi<<16 | lo, above + above2, int64(hist[lo])
}

// pick walks the histogram from the top and returns the bin holding the k-th
// largest entry and how many entries lie in higher bins.
func pick(hist []uint64, k int64) (uint32, int64) {
	var cum int64
	for b := len(hist) - 1; b >= 0; b-- {
		if cum+int64(hist[b]) >= k {
			return uint32(b), cum
		}
		cum += int64(hist[b])
	}
	return 0, cum // unreachable when k ≤ n
}

// histogram counts key(m) over the entries for which key reports true,
// with one 65536-bin histogram per goroutine, summed at the end.
func histogram(nChunks int, src Source, workers int, key func(uint32) (uint32, bool)) []uint64 {
	if workers > nChunks {
		workers = nChunks
	}
	if workers < 1 {
		workers = 1
	}
	local := make([][]uint32, workers)
	bufs := make([][]uint32, workers)
	for w := range local {
		local[w] = make([]uint32, 1<<16)
		bufs[w] = make([]uint32, parallel.Chunk)
	}
	parallel.ForN(nChunks, workers, func(w, c int) {
		h := local[w]
		for _, m := range src(c, bufs[w]) {
			if b, ok := key(m); ok {
				h[b]++
			}
		}
	})
	total := make([]uint64, 1<<16)
	for _, h := range local {
		for b, v := range h {
			total[b] += uint64(v)
		}
	}
	return total
}

// allowances counts the entries equal to bits in each chunk and hands out
// keep tie slots in chunk order.
func allowances(bits uint32, keep int64, nChunks int, src Source, workers int) []int32 {
	counts := make([]int32, nChunks)
	bufs := make([][]uint32, max(1, min(workers, nChunks)))
	for w := range bufs {
		bufs[w] = make([]uint32, parallel.Chunk)
	}
	parallel.ForN(nChunks, len(bufs), func(w, c int) {
		var n int32
		for _, m := range src(c, bufs[w]) {
			if m == bits {
				n++
			}
		}
		counts[c] = n
	})
	for c, n := range counts {
		a := int32(min(int64(n), keep))
		counts[c] = a
		keep -= int64(a)
	}
	return counts
}

// AbsBits returns the bit pattern of |x|.
func AbsBits(x float32) uint32 { return math.Float32bits(x) & 0x7fffffff }
