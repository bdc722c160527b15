//go:build !(goexperiment.simd && amd64)

package merge

// The plain build of DELLA's loops (della_simd_amd64.go has the vector
// ones).

// dellaKeys sets keys[j] to |row[j]|'s bit pattern and returns their
// minimum and maximum.
func dellaKeys(row []float32, keys []uint32) (kmin, kmax uint32) { return dellaKeysGo(row, keys) }

// dellaDraw sets u[j] = U_j = rng.Bits(key, start+j)>>40 for j < len(u),
// sets bit j of words when U_j < lo (kept whatever the rank) and bit j of
// band when lo ≤ U_j < hi, and reports whether any band bit is set. The
// bits must be 0 on entry.
func dellaDraw(key, start uint64, lo, hi uint32, u []uint32, words, band []uint64) bool {
	return dellaDrawGo(key, start, lo, hi, u, words, band)
}

// dellaAbsSum is Σ|x| in float64 over 8 lanes: lane l sums the entries
// j ≡ l (mod 8) in index order, and the lanes are added pairwise,
// ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
func dellaAbsSum(x []float32) float64 { return dellaAbsSumGo(x) }

// dellaApplyBits keeps entry j of tau, multiplied by scale, when bit j of
// words is set, and sets it to +0 otherwise.
func dellaApplyBits(tau []float32, words []uint64, scale float32) {
	dellaApplyBitsGo(tau, words, scale)
}

// dellaRank is entry j's ascending rank among keys, ties by lower index.
func dellaRank(keys []uint32, j int) uint32 { return dellaRankGo(keys, j) }

// dellaKeptAbsSum is dellaAbsSum of tau after dellaApplyBits(tau, words, 1),
// without changing tau.
func dellaKeptAbsSum(tau []float32, words []uint64) float64 { return dellaKeptAbsSumGo(tau, words) }

// dellaSubAbsSum sets tau = x − b and returns dellaAbsSum(tau), or false
// when x holds a NaN or ±Inf.
func dellaSubAbsSum(tau, x, b []float32) (float64, bool) { return dellaSubAbsSumGo(tau, x, b) }

// dellaPrefix replaces S[b] by S[0] + … + S[b].
func dellaPrefix(S []uint32) { dellaPrefixGo(S) }

// dellaRowsFast: in plain Go a row at a time is the faster preparation.
const dellaRowsFast = true

// dellaFused: the plain build merges in one pass too (dellaMergeGo).
const dellaFused = true

// dellaMerge writes chunk results out[j] = base[j] + λ·c[j] (see
// dellaMergeOp) and reports whether every result is finite.
func dellaMerge(out, base []float32, x [][]float32, op *dellaMergeOp) bool {
	return dellaMergeGo(out, base, x, op)
}

// dellaBuckets sets bk[j] = (keys[j] − kmin) >> shift + 1: 1 + the
// bucket of entry j (S's index of its count).
func dellaBuckets(keys []uint32, kmin, shift uint32, bk []uint32) {
	dellaBucketsGo(keys, kmin, shift, bk)
}

// dellaVector512 has no effect in the plain build (the tests set it).
var dellaVector512 = false

// dellaDrawCells is dellaDraw for a row whose band is split into cells
// (dellaScratch.cellBounds): it sets u[j] = U_j and, for U_j < lo, bit j of
// words (kept whatever the rank); for lo ≤ U_j < hi, c = (U_j − lo) >>
// shift, bit j of words when keys[j] ≥ cellHi[c] (kept) and bit j of amb
// when cellLo[c] ≤ keys[j] < cellHi[c] (the rank decides). It reports
// whether any amb bit is set. The bits must be 0 on entry.
func dellaDrawCells(key, start uint64, lo, hi uint32, cellLo, cellHi *[dellaCells]uint32, shift uint32, keys, u []uint32, words, amb []uint64) bool {
	return dellaDrawCellsGo(key, start, lo, hi, cellLo, cellHi, shift, keys, u, words, amb)
}

// dellaSubKeys sets tau = x − b and keys[j] to |tau[j]|'s bits, adds
// |tau[j]| (in float64) to acc[j mod 8] in index order and returns the
// keys' least and greatest, or false when x holds a NaN or ±Inf.
func dellaSubKeys(tau, x, b []float32, keys []uint32, acc *[8]float64) (kmin, kmax uint32, ok bool) {
	return dellaSubKeysGo(tau, x, b, keys, acc)
}

// dellaKeptAbsAdd adds |tau[j]| to acc[j mod 8], in index order, for the
// j whose bit in words is set.
func dellaKeptAbsAdd(tau []float32, words []uint64, acc *[8]float64) {
	dellaKeptAbsAddGo(tau, words, acc)
}

// dellaSubKeysKept is dellaSubKeys of (tau, x, b, keys, acc) and
// dellaKeptAbsAdd of (prev, words, accPrev), prev as long as tau.
func dellaSubKeysKept(tau, x, b []float32, keys []uint32, acc *[8]float64, prev []float32, words []uint64, accPrev *[8]float64) (kmin, kmax uint32, ok bool) {
	return dellaSubKeysKeptGo(tau, x, b, keys, acc, prev, words, accPrev)
}
