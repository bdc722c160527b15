package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// The counting kernel of the one-pass TIES family (selection_onepass.go):
// the counting pass of the top-k selection (vec.CountDiffWindows' counts
// and candidates) for every model of a chunk in one loop, which also marks
// the entries whose magnitude falls inside a flagging window of some
// model: the entries whose keep decision the sample's bracket leaves open.

// maxFlagWindows is the most windows countFlag takes (two cuts of eight
// models for Breadcrumbs).
const maxFlagWindows = 16

// flagWindows are countFlag's windows: window i is over model wm[i]'s
// magnitudes, holds the bits in [lo[i], hi[i]] (both at most 0x7fffffff)
// and, when flag[i], marks its entries.
type flagWindows struct {
	n      int
	wm     [maxFlagWindows]int
	lo, hi [maxFlagWindows]uint32
	flag   [maxFlagWindows]bool
}

// add appends a window over model m with bounds lo, hi clamped to
// 0x7fffffff (the largest magnitude bits of a float32, a NaN's: a
// finite difference stays below, so the counts of finite inputs do not
// change).
func (fw *flagWindows) add(m int, lo, hi uint32, flag bool) {
	i := fw.n
	fw.wm[i], fw.lo[i], fw.hi[i], fw.flag[i] = m, min(lo, 0x7fffffff), min(hi, 0x7fffffff), flag
	fw.n++
}

// countFlagGo is countFlag's scalar twin: for every window i it adds to
// above[i] the entries j whose magnitude bits |x[wm[i]][j] − b[j]| exceed
// hi[i], appends to cands[i] those within [lo[i], hi[i]] in index order,
// and sets bit j&7 of flags[j>>3] when such an entry is in a flagging
// window (flags is cleared first). It reports whether b and every x[m]
// are finite (the counts mean nothing when they are not).
func countFlagGo(x [][]float32, b []float32, fw *flagWindows, above []int64, cands [][]uint32, flags []uint8) bool {
	clear(flags[:(len(b)+7)/8])
	var fin float32
	var ab [8]uint32
	for j, bv := range b {
		fin += bv * 0
		for m, xm := range x {
			v := xm[j]
			fin += v * 0
			ab[m] = math.Float32bits(v-bv) & 0x7fffffff
		}
		for i := range fw.n {
			a, h := ab[fw.wm[i]], fw.hi[i]
			above[i] += int64((uint64(h) - uint64(a)) >> 63)
			if a >= fw.lo[i] && a <= h {
				cands[i] = append(cands[i], a)
				if fw.flag[i] {
					flags[j>>3] |= 1 << (j & 7)
				}
			}
		}
	}
	return fin == fin
}

// cgScratch is a worker's scratch for countGather: per flagged window
// its count above hi and its candidates, and the flagged entries'
// indices, base and model values, each with room for a whole chunk plus
// one vector.
type cgScratch struct {
	cand  [maxFlagWindows][]uint32
	nc    [maxFlagWindows]int // candidates in cand[i]
	above [maxFlagWindows]int64
	idx   []int32
	base  []float32
	x     [8][]float32
	nf    int // flagged entries gathered
	// A block's weighted masked and raw task vectors, and its marks (a
	// bit per entry) in countGather's loops.
	tw, raw [8][cgBlock]float32
	fl      [cgBlock / 16]uint16
}

// reset empties s and gives it room for n entries of W windows and T
// models (plus one vector of 16).
func (s *cgScratch) reset(n, W, T int) {
	c := n + 16
	grow32 := func(v []float32) []float32 {
		if cap(v) < c {
			return make([]float32, c)
		}
		return v[:c]
	}
	if cap(s.idx) < c {
		s.idx = make([]int32, c)
	}
	s.idx = s.idx[:c]
	s.base = grow32(s.base)
	for m := range T {
		s.x[m] = grow32(s.x[m])
	}
	s.nc, s.above, s.nf = [maxFlagWindows]int{}, [maxFlagWindows]int64{}, 0
}

// countGatherGo is countGather's scalar part over the entries from on:
// countFlagGo's counts of the flagged windows, MergeTasks' provisional
// results, and the flagged entries' indices and inputs appended to s (the
// candidates are the caller's). It reports whether those inputs are
// finite, and whether the results of the entries not flagged are.
func countGatherGo(out, b []float32, x [][]float32, fw *flagWindows, p *vec.TaskMerge, s *cgScratch, from int) (fin, rfin bool) {
	n := len(b) - from
	W := fw.n
	tx := make([][]float32, len(x))
	for m, xm := range x {
		tx[m] = xm[from:len(b)]
	}
	above := make([]int64, W)
	cands := make([][]uint32, W)
	flags := make([]uint8, (n+7)/8)
	fin = countFlagGo(tx, b[from:], fw, above, cands, flags)
	vec.MergeTasks(out[from:], b[from:], tx, p)
	for i := range W {
		if fw.flag[i] {
			s.above[i] += above[i]
		}
	}
	for j := range n {
		if flags[j>>3]&(1<<(j&7)) == 0 {
			continue
		}
		k := s.nf
		s.idx[k] = int32(from + j)
		s.base[k] = b[from+j]
		for m, xm := range tx {
			s.x[m][k] = xm[j]
		}
		s.nf++
	}
	rfin = true
	for j, v := range out[from:] {
		if v-v != 0 && flags[j>>3]&(1<<(j&7)) == 0 {
			rfin = false
		}
	}
	return fin, rfin
}

// appendMags16Go appends the magnitude bits |x[j] − b[j]| of 16 entries
// to s (appendMags16's twin).
func appendMags16Go(s []uint32, x, b *[16]float32) []uint32 {
	for j, v := range x {
		s = append(s, math.Float32bits(v-b[j])&0x7fffffff)
	}
	return s
}
