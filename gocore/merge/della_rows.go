package merge

import (
	"math"
	"math/bits"
	"slices"
	"sort"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// DELLA's keep decision without sorting the row.
//
// Entry j of a row of n is kept when u_j < p(rank_j) (della.go), u_j =
// rng.Uniform(key, start+j) = U_j·2⁻²⁴ with U_j a 24-bit integer. As p is
// exact in float32, u < p(r) exactly when U < thr[r] = ⌈p(r)·2²⁴⌉
// (vec.DareThreshold), and thr rises with r. So an entry with U_j < thr[0]
// is kept and one with U_j ≥ thr[n−1] dropped whatever its rank (with
// density 0.2 and ε 0.15 that is 70 % of the entries); only the others
// (the band) need their rank, and only as far as it decides the comparison.
//
// The ranks come from one counting pass: the magnitudes' bit patterns k_j
// (|x| as uint32, monotone in |x|) are bucketed by (k_j − k_min) >> shift
// into at most 2^⌈log₂ n⌉ buckets (16 ≤ · ≤ 65536). An entry in bucket b has
// a rank in [S_b, S_{b+1}), S the prefix sums of the counts, so U_j <
// thr[S_b] keeps it and U_j ≥ thr[S_{b+1}−1] drops it. Only when U_j falls
// between the two (rare: a bucket holds a few entries) is the exact rank
// needed; then the row's entries are scattered into their buckets once and
// that bucket alone is sorted by (k, index), which is the rank's definition
// (ties by lower index). Every decision equals the one made from a full
// sort, so the result is bit for bit the definition's; the work is a few
// passes over the row whatever the data (a row of equal magnitudes is one
// bucket, ranked by index without a sort; a bucket is sorted at most once).
//
// Rows of dellaCellMin entries or more decide most of the band in a vector
// pass (AVX-512; without it the per-entry lookups below are cheaper),
// without looking up S per entry: the band's draws are split into at
// most dellaCells cells of equal width, and the draws of cell c keep an
// entry of rank ≥ T_{c+1} and drop one of rank < T_c (T_c the least
// keeping rank of the cell's first draw). From S, per row, two keys per
// cell: an entry with a key at least the start of the bucket holding rank
// T_{c+1} has that rank or more (every entry of the buckets below is
// smaller), one with a key below the start of the bucket holding T_c has
// a smaller rank. The cell's bounds are looked up by a permute of
// registers; only the entries between them (a few per cent of the band)
// take the path above.

// dellaScratch holds one goroutine's buffers for rows of up to cap entries.
type dellaScratch struct {
	cap        int
	keys       []uint32 // |x| bits of the row
	bucket     []uint32 // 1 + the bucket of each entry of the row
	u          []uint32 // U of the row's entries
	bandWords  []uint64 // bit j: entry j is in the band
	members    []uint32 // entry indices grouped by bucket (after a scatter)
	rank       []uint32 // exact ranks of the entries of sorted buckets
	tmp        []uint64 // one bucket's (k, index) keys while it is sorted
	words      []uint64 // the row's keep bits
	cnt, pos   []uint32 // bucket bounds S (len buckets+1) and scatter cursors
	sorted     []uint32 // sorted[b] == stamp: bucket b of this row is ranked
	stamp      uint32
	scattered  bool
	direct     int      // entries ranked by dellaRank in this row
	chunkWords []uint64 // a chunk's keep bits when they are not kept for the merge pass
	sink       uint32   // dellaTouch's sums

	// thr is the threshold table of (thrN, thrLo, thrSpan).
	thr            []uint32
	thrN           int
	thrLo, thrSpan float32
	thrInitialised bool

	// The band's cells (dellaCellFilter): cell c holds the draws U with
	// (U − thr[0]) >> cellShift = c, c < cells (0: no filter); cellT[c] =
	// #{r: thr[r] ≤ thr[0] + c<<cellShift} for c ≤ cells, the least rank
	// that keeps the draw at the cell's start.
	cells, cellShift int
	cellT            [dellaCells + 1]uint32
	// The row's key bounds of the cells (rowBits).
	cellLo, cellHi [dellaCells]uint32
	amb            []uint64 // bit j: entry j is in the band and its cell leaves it undecided
	list           []uint32 // amb's entries (len cap+2)
}

// dellaCells is the most cells of the band filter (a two-register permute).
const dellaCells = 32

// dellaCellsAlways: rows are filtered by cells without the AVX-512 loops
// too (the tests set it; in plain Go the per-entry lookups of the band are
// cheaper).
var dellaCellsAlways = false

// dellaCellMin is the least row length filtered by cells.
const dellaCellMin = 64

// dellaMaxBucketBits bounds the bucket count at 2^16.
const dellaMaxBucketBits = 16

// dellaBucketBits is the log₂ of the bucket count for rows of n entries.
func dellaBucketBits(n int) int {
	return min(max(bits.Len(uint(n-1)), 4), dellaMaxBucketBits)
}

var dellaScratchPool sync.Pool

// dellaPool returns buffers for rows of up to n entries; put them back with
// dellaScratchPool.Put.
func dellaPool(n int) *dellaScratch {
	sc, _ := dellaScratchPool.Get().(*dellaScratch)
	if sc != nil && sc.cap >= n {
		return sc
	}
	nb := 1 << dellaBucketBits(n)
	return &dellaScratch{
		cap: n, keys: make([]uint32, n), bucket: make([]uint32, n), u: make([]uint32, n), bandWords: make([]uint64, (n+63)/64),
		members: make([]uint32, n), rank: make([]uint32, n), tmp: make([]uint64, n),
		words: make([]uint64, (n+63)/64), amb: make([]uint64, (n+63)/64), list: make([]uint32, n+2), cnt: make([]uint32, nb+1), pos: make([]uint32, nb+1),
		sorted: make([]uint32, nb),
	}
}

// dellaP is the keep probability of ascending rank r in a row of n > 1
// entries, in float32 as mergekit computes it: lo + (r/(n−1))·span (the
// conversion stops the compiler from fusing the multiply and the add).
func dellaP(r, n int, lo, span float32) float32 {
	rn := float32(0.5)
	if n > 1 {
		rn = float32(r) / float32(n-1)
	}
	return lo + float32(rn*span)
}

// thresholds returns thr[r] = ⌈dellaP(r)·2²⁴⌉ for r < n, cached for the
// last (n, lo, span).
func (sc *dellaScratch) thresholds(n int, lo, span float32) []uint32 {
	if sc.thrInitialised && sc.thrN == n && sc.thrLo == lo && sc.thrSpan == span {
		return sc.thr[:n]
	}
	if cap(sc.thr) < n {
		sc.thr = make([]uint32, n)
	}
	thr := sc.thr[:n]
	for r := range thr {
		thr[r] = uint32(vec.DareThreshold(dellaP(r, n, lo, span)))
	}
	sc.thrN, sc.thrLo, sc.thrSpan, sc.thrInitialised = n, lo, span, true
	sc.cells = 0
	if width := thr[n-1] - thr[0]; n >= dellaCellMin && width > 0 {
		// The least shift that splits the band into dellaCells cells or
		// fewer.
		sh := max(0, bits.Len32(width-1)-bits.Len32(dellaCells-1))
		sc.cells, sc.cellShift = int((width-1)>>sh)+1, sh
		for c := range sc.cells + 1 {
			u := thr[0] + uint32(c)<<sh
			sc.cellT[c] = uint32(sort.Search(n, func(r int) bool { return thr[r] > u }))
		}
	}
	return thr
}

// cellBounds sets the row's cellLo and cellHi from its bucket bounds S
// (buckets of keys kmin + [b, b+1)<<shift): an entry of the band whose draw
// falls in cell c is dropped when its key is below cellLo[c] (fewer than
// cellT[c] entries lie below that key, so its rank is below cellT[c]) and
// kept when its key is at least cellHi[c] (at least cellT[c+1] entries lie
// below, so its rank is at least cellT[c+1]).
func (sc *dellaScratch) cellBounds(S []uint32, kmin uint32, shift int) {
	// b[c] = the greatest b with S[b] ≤ cellT[c] (S ascending, S[0] = 0),
	// by binary searches in lockstep: their loads are independent.
	nc := sc.cells + 1
	var b [dellaCells + 1]int
	t := sc.cellT[:nc]
	for m := len(S); m > 1; {
		h := m >> 1
		for c, tc := range t {
			// Without a branch: b[c] += h when S[b[c]+h] ≤ tc.
			b[c] += h & ((int(S[b[c]+h]) - int(tc) - 1) >> 63)
		}
		m -= h
	}
	for c, tc := range t {
		bc := b[c]
		if c < sc.cells {
			sc.cellLo[c] = kmin + uint32(bc)<<shift
		}
		if S[bc] != tc {
			bc++ // S[bc] < tc: the bucket holding rank tc starts below
		}
		if c > 0 {
			sc.cellHi[c-1] = kmin + uint32(bc)<<shift
		}
	}
}

// rowBits sets words[:⌈n/64⌉] to the keep bits of row (bit j of word j/64
// for entry j; words beyond n are 0), whose entry j is element start+j of
// stream key; thr is sc.thresholds(len(row), …).
func (sc *dellaScratch) rowBits(row []float32, key, start uint64, thr []uint32, words []uint64) {
	kmin, kmax := dellaKeys(row, sc.keys[:len(row)])
	sc.rowKeyBits(len(row), kmin, kmax, key, start, thr, words)
}

// rowKeyBits is rowBits for a row of n entries whose keys (|x|'s bits) are
// in sc.keys, kmin and kmax their least and greatest.
func (sc *dellaScratch) rowKeyBits(n int, kmin, kmax uint32, key, start uint64, thr []uint32, words []uint64) {
	words = words[:(n+63)/64]
	clear(words)
	keys := sc.keys[:n]
	u := sc.u[:n]
	cells := sc.cells
	if sc.thrN != n || !(dellaVector512 || dellaCellsAlways) {
		cells = 0 // the cells pay with the vector loops only
	}
	if cells == 0 || kmin == kmax {
		band := sc.bandWords[:len(words)]
		clear(band)
		if !dellaDraw(key, start, thr[0], thr[n-1], u, words, band) {
			return
		}
		if kmin == kmax { // one magnitude: the rank is the index
			for w, bw := range band {
				var acc uint64
				for ; bw != 0; bw &= bw - 1 {
					j := w<<6 | bits.TrailingZeros64(bw)
					acc |= uint64((u[j]-thr[j])>>31) << (j & 63)
				}
				words[w] |= acc
			}
			return
		}
		S, shift := sc.bounds(keys, kmin, kmax)
		sc.decide(band, u, keys, thr, S, kmin, shift, words)
		return
	}
	S, shift := sc.bounds(keys, kmin, kmax)
	// Most of the band is decided by its cell; the rest is left in amb.
	sc.cellBounds(S, kmin, shift)
	amb := sc.amb[:len(words)]
	clear(amb)
	if dellaDrawCells(key, start, thr[0], thr[n-1], &sc.cellLo, &sc.cellHi, uint32(sc.cellShift), keys, u, words, amb) {
		sc.decideList(dellaBitList(amb, sc.list[:n+2]), u, keys, thr, S, kmin, shift, words)
	}
}

// bounds buckets the row's keys (bucket (k − kmin) >> shift, 1 + it in
// sc.bucket) and returns the bucket bounds S (S[b]: the entries in the
// buckets below b; S[len(S)−1] = n) and the shift.
func (sc *dellaScratch) bounds(keys []uint32, kmin, kmax uint32) ([]uint32, int) {
	n := len(keys)
	shift := max(0, bits.Len32(kmax-kmin)-dellaBucketBits(n))
	S := sc.cnt[:(kmax-kmin)>>shift+2]
	clear(S)
	bk := sc.bucket[:n]
	dellaBuckets(keys, kmin, uint32(shift), bk)
	dellaCount(bk, S)
	dellaPrefix(S)
	return S, shift
}

// dellaCount adds 1 to S[d] for every d of bk, 8 at a time (one bounds
// check of bk per 8, and the loop's own work spread over 8 counts).
func dellaCount(bk, S []uint32) {
	n8 := len(bk) &^ 7
	for i := 0; i < n8; i += 8 {
		d := bk[i : i+8 : i+8]
		S[d[0]]++
		S[d[1]]++
		S[d[2]]++
		S[d[3]]++
		S[d[4]]++
		S[d[5]]++
		S[d[6]]++
		S[d[7]]++
	}
	for _, d := range bk[n8:] {
		S[d]++
	}
}

// decide sets in words the keep bits of the entries of band (bit j: entry
// j), from their draws u, their buckets' rank bounds and, where these
// leave it open, their exact ranks.
func (sc *dellaScratch) decide(band []uint64, u, keys, thr, S []uint32, kmin uint32, shift int, words []uint64) {
	bk := sc.bucket[:len(keys)]
	sc.scattered, sc.direct = false, 0
	// Branch-free but for the rare undecided entries: the keep decisions
	// are random, and a branch on them would be mispredicted half the time.
	for w, bw := range band {
		var acc uint64 // the word's keep bits, stored once
		for ; bw != 0; bw &= bw - 1 {
			j := uint32(w<<6 | bits.TrailingZeros64(bw))
			uj := u[j]
			b := bk[j] - 1
			tl, th := thr[S[b]], thr[S[b+1]-1]
			keep := (uj - tl) >> 31 // uj < tl (both below 2²⁵)
			if uj-tl < th-tl {      // tl ≤ uj < th: the rank decides
				keep = (uj - thr[sc.rankOf(j, b, keys, S, kmin, shift)]) >> 31
			}
			acc |= uint64(keep) << (j & 63)
		}
		words[w] |= acc
	}
}

// dellaBitList lists the set bits of bw (bit j of word j/64: j) in
// ascending order in list, which has room for their count + 2, and
// returns them. Without a branch on the bits for words of up to two (the
// bits are sparse and random; a loop over each word's bits would mispredict
// its end once per word).
func dellaBitList(bw []uint64, list []uint32) []uint32 {
	m := 0
	for w, x := range bw {
		base := uint32(w << 6)
		y := x & (x - 1)
		// Both written, counted when set (TrailingZeros64(0) = 64 is
		// overwritten or left beyond the end).
		list[m] = base | uint32(bits.TrailingZeros64(x))
		m += int((x | -x) >> 63)
		list[m] = base | uint32(bits.TrailingZeros64(y))
		m += int((y | -y) >> 63)
		for z := y & (y - 1); z != 0; z &= z - 1 { // rare: three or more
			list[m] = base | uint32(bits.TrailingZeros64(z))
			m++
		}
	}
	return list[:m]
}

// decideList is decide for the entries listed in list (ascending): one
// loop with no branch but the rare one to the exact rank, so the lookups
// of several entries are under way at once.
func (sc *dellaScratch) decideList(list, u, keys, thr, S []uint32, kmin uint32, shift int, words []uint64) {
	bk := sc.bucket[:len(keys)]
	sc.scattered, sc.direct = false, 0
	for _, j := range list {
		uj := u[j]
		b := bk[j] - 1
		tl, th := thr[S[b]], thr[S[b+1]-1]
		keep := (uj - tl) >> 31 // uj < tl (both below 2²⁵)
		if uj-tl < th-tl {      // tl ≤ uj < th: the rank decides
			keep = (uj - thr[sc.rankOf(j, b, keys, S, kmin, shift)]) >> 31
		}
		words[j>>6] |= uint64(keep) << (j & 63)
	}
}

// dellaDirectRanks is how many undecided entries of a row are ranked by
// counting over the row (dellaRank) before the row is scattered into its
// buckets.
const dellaDirectRanks = 8

// rankOf is the exact rank of entry j of bucket b: for the row's first
// dellaDirectRanks calls a count over the row; then the entries are
// scattered into their buckets once, and bucket b is sorted by (k, index)
// on its first call.
func (sc *dellaScratch) rankOf(j, b uint32, keys, S []uint32, kmin uint32, shift int) uint32 {
	if sc.direct < dellaDirectRanks {
		sc.direct++
		return dellaRank(keys, int(j))
	}
	if !sc.scattered {
		pos := sc.pos[:len(S)]
		copy(pos, S)
		for i, k := range keys {
			d := (k - kmin) >> shift
			sc.members[pos[d]] = uint32(i)
			pos[d]++
		}
		sc.scattered = true
		sc.stamp++
		if sc.stamp == 0 { // wrapped: forget every old mark
			clear(sc.sorted)
			sc.stamp = 1
		}
	}
	if sc.sorted[b] != sc.stamp {
		lo, hi := S[b], S[b+1]
		tmp := sc.tmp[:hi-lo]
		for i, m := range sc.members[lo:hi] {
			tmp[i] = uint64(keys[m])<<32 | uint64(m)
		}
		slices.Sort(tmp)
		for i, t := range tmp {
			sc.rank[uint32(t)] = lo + uint32(i)
		}
		sc.sorted[b] = sc.stamp
	}
	return sc.rank[j]
}

// orBitsAt ORs the first n bits of src (its later bits are 0) into dst
// starting at bit off.
func orBitsAt(dst []uint64, off int, src []uint64, n int) {
	src = src[:(n+63)/64]
	w, s := off>>6, uint(off&63)
	if s == 0 {
		for i, x := range src {
			dst[w+i] |= x
		}
		return
	}
	for i, x := range src {
		dst[w+i] |= x << s
		if hi := x >> (64 - s); hi != 0 {
			dst[w+i+1] |= hi
		}
	}
}

// dellaDrawCellsGo is dellaDrawCells in plain Go.
func dellaDrawCellsGo(key, start uint64, lo, hi uint32, cellLo, cellHi *[dellaCells]uint32, shift uint32, keys, u []uint32, words, amb []uint64) bool {
	return dellaDrawCellsFrom(key, start, lo, hi, cellLo, cellHi, shift, keys, u, words, amb, 0)
}

// dellaDrawCellsFrom is dellaDrawCells for the entries from j = from on
// (from a multiple of 16); the words' bits from entry from on must be 0.
func dellaDrawCellsFrom(key, start uint64, lo, hi uint32, cellLo, cellHi *[dellaCells]uint32, shift uint32, keys, u []uint32, words, amb []uint64, from int) bool {
	var any uint64
	keys = keys[:len(u)]
	for j := from; j < len(u); j++ {
		x := uint32(rng.Bits(key, start+uint64(j)) >> 40)
		u[j] = x
		c := (x - lo) >> shift & (dellaCells - 1)
		k := keys[j]
		// Branch-free: the draws are random.
		below := uint64((x - lo) >> 31)
		in := uint64((x-hi)>>31) &^ below
		var kh, kl uint64
		if k >= cellHi[c] {
			kh = 1
		}
		if k >= cellLo[c] {
			kl = 1
		}
		keep := below | in&kh
		open := in & kl &^ kh
		words[j>>6] |= keep << (j & 63)
		amb[j>>6] |= open << (j & 63)
		any |= open
	}
	return any != 0
}

// dellaKeysGo is dellaKeys in plain Go.
func dellaKeysGo(row []float32, keys []uint32) (kmin, kmax uint32) {
	kmin = math.MaxUint32
	for j, x := range row {
		k := math.Float32bits(x) &^ (1 << 31)
		keys[j] = k
		kmin = min(kmin, k)
		kmax = max(kmax, k)
	}
	return kmin, kmax
}

// dellaBucketsGo is dellaBuckets in plain Go.
func dellaBucketsGo(keys []uint32, kmin, shift uint32, bk []uint32) {
	bk = bk[:len(keys)]
	for j, k := range keys {
		bk[j] = (k-kmin)>>shift + 1
	}
}

// dellaDrawGo is dellaDraw in plain Go.
func dellaDrawGo(key, start uint64, lo, hi uint32, u []uint32, words, band []uint64) bool {
	return dellaDrawFrom(key, start, lo, hi, u, words, band, 0)
}

// dellaDrawFrom is dellaDraw for the entries from j = from on; it reports
// whether any of them is in the band.
func dellaDrawFrom(key, start uint64, lo, hi uint32, u []uint32, words, band []uint64, from int) bool {
	var any uint64
	for j := from; j < len(u); j++ {
		x := uint32(rng.Bits(key, start+uint64(j)) >> 40)
		u[j] = x
		// Branch-free: the draws are random.
		below := uint64((x - lo) >> 31)
		in := uint64((x-hi)>>31) &^ below
		words[j>>6] |= below << (j & 63)
		band[j>>6] |= in << (j & 63)
		any |= in
	}
	return any != 0
}

// dellaSubKeysGo is dellaSubKeys in plain Go.
func dellaSubKeysGo(tau, x, b []float32, keys []uint32, acc *[8]float64) (kmin, kmax uint32, ok bool) {
	return dellaSubKeysFrom(tau, x, b, keys, acc, 0, math.MaxUint32, 0)
}

// dellaSubKeysFrom is dellaSubKeys for the entries from j = from on (from
// a multiple of 8), kmin and kmax those of the entries before.
func dellaSubKeysFrom(tau, x, b []float32, keys []uint32, acc *[8]float64, from int, kmin, kmax uint32) (uint32, uint32, bool) {
	x, b, keys = x[:len(tau)], b[:len(tau)], keys[:len(tau)]
	for j := from; j < len(tau); j++ {
		if math.IsNaN(float64(x[j])) || math.IsInf(float64(x[j]), 0) {
			return 0, 0, false
		}
		t := x[j] - b[j]
		tau[j] = t
		k := math.Float32bits(t) &^ (1 << 31)
		keys[j] = k
		kmin, kmax = min(kmin, k), max(kmax, k)
		acc[j&7] += math.Abs(float64(t))
	}
	return kmin, kmax, true
}

// dellaSubKeysKeptGo is dellaSubKeysKept in plain Go.
func dellaSubKeysKeptGo(tau, x, b []float32, keys []uint32, acc *[8]float64, prev []float32, words []uint64, accPrev *[8]float64) (kmin, kmax uint32, ok bool) {
	dellaKeptAbsAddGo(prev[:len(tau)], words, accPrev)
	return dellaSubKeysGo(tau, x, b, keys, acc)
}

// dellaKeptAbsAddGo is dellaKeptAbsAdd in plain Go.
func dellaKeptAbsAddGo(tau []float32, words []uint64, acc *[8]float64) {
	dellaKeptAbsSumTail(tau, words, 0, acc)
}

// dellaAbsSumGo is dellaAbsSum in plain Go.
func dellaAbsSumGo(x []float32) float64 {
	var acc [8]float64
	return dellaAbsSumTail(x, 0, &acc)
}

// dellaSubAbsSumGo is dellaSubAbsSum in plain Go.
func dellaSubAbsSumGo(tau, x, b []float32) (float64, bool) {
	var acc [8]float64
	return dellaSubAbsSumTail(tau, x, b, 0, &acc)
}

// dellaSubAbsSumTail is dellaSubAbsSum from entry from on, the lanes'
// sums so far in acc.
func dellaSubAbsSumTail(tau, x, b []float32, from int, acc *[8]float64) (float64, bool) {
	x, b = x[:len(tau)], b[:len(tau)]
	for j := from; j < len(tau); j++ {
		if math.IsNaN(float64(x[j])) || math.IsInf(float64(x[j]), 0) {
			return 0, false
		}
		tau[j] = x[j] - b[j]
	}
	return dellaAbsSumTail(tau, from, acc), true
}

// dellaAbsSumTail adds |x[j]| for j ≥ from to acc[j mod 8] and returns the
// lanes' sum in dellaAbsSum's order.
func dellaAbsSumTail(x []float32, from int, acc *[8]float64) float64 {
	for j := from; j < len(x); j++ {
		acc[j&7] += math.Abs(float64(x[j]))
	}
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

// dellaPrefixGo is dellaPrefix in plain Go.
func dellaPrefixGo(S []uint32) {
	var sum uint32
	for b, c := range S {
		sum += c
		S[b] = sum
	}
}

// dellaRankGo is dellaRank in plain Go.
func dellaRankGo(keys []uint32, j int) uint32 {
	k := keys[j]
	var r uint32
	for i, x := range keys {
		if x < k || x == k && i < j {
			r++
		}
	}
	return r
}

// dellaKeptAbsSumGo is dellaKeptAbsSum in plain Go.
func dellaKeptAbsSumGo(tau []float32, words []uint64) float64 {
	var acc [8]float64
	return dellaKeptAbsSumTail(tau, words, 0, &acc)
}

// dellaKeptAbsSumTail adds |tau[j]| for the kept j ≥ from to acc[j mod 8]
// and returns the lanes' sum in dellaAbsSum's order.
func dellaKeptAbsSumTail(tau []float32, words []uint64, from int, acc *[8]float64) float64 {
	for j := from; j < len(tau); j++ {
		// Multiplied by the bit, not branched on: the bits are random.
		acc[j&7] += math.Abs(float64(tau[j])) * float64(words[j>>6]>>(j&63)&1)
	}
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

// dellaApplyBitsGo is dellaApplyBits in plain Go.
func dellaApplyBitsGo(tau []float32, words []uint64, scale float32) {
	for j := range tau {
		if words[j>>6]>>(j&63)&1 != 0 {
			tau[j] *= scale
		} else {
			tau[j] = 0
		}
	}
}
