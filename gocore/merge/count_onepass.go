package merge

import "math"

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
