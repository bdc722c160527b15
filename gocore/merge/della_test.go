package merge

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/rng"
)

// dellaRowKind names a way to fill a test row.
type dellaRowKind struct {
	name string
	fill func(r *rand.Rand, x []float32)
}

// dellaRowKinds are the rows the keep decision is checked on: the common
// case and the ones that stress the buckets (one magnitude, a few repeated
// ones, an outlier that squeezes the rest into one bucket, a range of 2²⁴⁰,
// subnormals, signed zeros).
var dellaRowKinds = []dellaRowKind{
	{"gaussian", func(r *rand.Rand, x []float32) {
		for i := range x {
			x[i] = float32(0.01 * r.NormFloat64())
		}
	}},
	{"zeros", func(_ *rand.Rand, x []float32) { clear(x) }},
	{"one magnitude, both signs", func(r *rand.Rand, x []float32) {
		for i := range x {
			x[i] = 0.25
			if r.IntN(2) == 0 {
				x[i] = -0.25
			}
		}
	}},
	{"three values", func(r *rand.Rand, x []float32) {
		v := []float32{0.1, -0.2, 0.3}
		for i := range x {
			x[i] = v[r.IntN(3)]
		}
	}},
	{"outlier", func(r *rand.Rand, x []float32) {
		for i := range x {
			x[i] = 1 + float32(r.Float64())*1e-6
		}
		x[r.IntN(len(x))] = 1e30
	}},
	{"wide range", func(r *rand.Rand, x []float32) {
		for i := range x {
			x[i] = float32(math.Ldexp(r.Float64()+0.5, r.IntN(240)-120))
		}
	}},
	{"subnormals and signed zeros", func(r *rand.Rand, x []float32) {
		for i := range x {
			switch r.IntN(4) {
			case 0:
				x[i] = math.Float32frombits(uint32(r.IntN(1 << 10)))
			case 1:
				x[i] = float32(math.Copysign(0, -1))
			case 2:
				x[i] = 0
			default:
				x[i] = -math.Float32frombits(uint32(r.IntN(1 << 10)))
			}
		}
	}},
	{"ties in many buckets", func(r *rand.Rand, x []float32) {
		for i := range x {
			x[i] = float32(r.IntN(len(x)/4+1)) * 0.001
		}
	}},
	{"gaussian with a 1e6 outlier", func(r *rand.Rand, x []float32) {
		for i := range x {
			x[i] = float32(0.01 * r.NormFloat64())
		}
		x[r.IntN(len(x))] = 1e4
	}},
	{"half zeros", func(r *rand.Rand, x []float32) {
		for i := range x {
			if r.IntN(2) == 0 {
				x[i] = float32(0.01 * r.NormFloat64())
			} else {
				x[i] = 0
			}
		}
	}},
	{"gaussian, coarse", func(r *rand.Rand, x []float32) {
		// A task vector of float32 differences: magnitudes on a grid.
		for i := range x {
			b := float32(r.NormFloat64())
			x[i] = (b + float32(0.01*r.NormFloat64())) - b
		}
	}},
}

// dellaRowWant is the keep decision of a row from the definition: ranks by
// a stable sort of |x|, keep when Uniform < dellaP(rank).
func dellaRowWant(row []float32, key, start uint64, lo, span float32) []bool {
	n := len(row)
	idx := make([]int, n)
	for j := range idx {
		idx[j] = j
	}
	sort.SliceStable(idx, func(a, b int) bool {
		return math.Abs(float64(row[idx[a]])) < math.Abs(float64(row[idx[b]]))
	})
	keep := make([]bool, n)
	for rank, j := range idx {
		keep[j] = rng.Uniform(key, start+uint64(j)) < dellaP(rank, n, lo, span)
	}
	return keep
}

func TestDellaRowBitsMatchDefinition(t *testing.T) {
	// With the cells where the build uses them, and with them whatever the
	// build (their plain-Go twins in the plain build).
	defer func(v bool) { dellaCellsAlways = v }(dellaCellsAlways)
	for _, always := range []bool{false, true} {
		dellaCellsAlways = always
		testDellaRowBits(t)
	}
}

func testDellaRowBits(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	params := []struct{ density, eps float64 }{{0.2, 0.15}, {0.5, 0.49}, {0.4, 0}, {0.9, 0.05}}
	sc := dellaPool(0)
	for _, kind := range dellaRowKinds {
		for _, n := range []int{1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 300, 2048, 5000} {
			for _, pe := range params {
				row := make([]float32, n)
				kind.fill(r, row)
				lo, span := float32(pe.density-pe.eps), 2*float32(pe.eps)
				key := rng.Key(3, kind.name, n)
				start := uint64(r.IntN(1 << 20))
				want := dellaRowWant(row, key, start, lo, span)
				if sc.cap < n {
					sc = dellaPool(n)
				}
				before := slices.Clone(row)
				sc.rowBits(row, key, start, sc.thresholds(n, lo, span), sc.words)
				if !slices.Equal(row, before) {
					t.Fatalf("%s, n=%d: rowBits changed the row", kind.name, n)
				}
				for j, w := range want {
					if got := sc.words[j>>6]>>(j&63)&1 == 1; got != w {
						t.Fatalf("%s, n=%d, density %v ε %v: entry %d kept=%v, want %v",
							kind.name, n, pe.density, pe.eps, j, got, w)
					}
				}
				for j := n; j < (n+63)/64*64; j++ {
					if sc.words[j>>6]>>(j&63)&1 != 0 {
						t.Fatalf("%s, n=%d: bit %d beyond the row is set", kind.name, n, j)
					}
				}
			}
		}
	}
}

// TestDellaVectorLoopsMatchTwins: each loop of della_simd_amd64.go gives
// its plain-Go twin's result bit for bit, for every length around the
// vector width (in the plain build both sides are the twin).
func TestDellaVectorLoopsMatchTwins(t *testing.T) {
	// The AVX-512 loops where the CPU has them, and the AVX2 ones.
	defer func(v bool) { dellaVector512 = v }(dellaVector512)
	for _, wide := range []bool{dellaVector512, false} {
		dellaVector512 = wide
		testDellaVectorLoops(t)
	}
}

func testDellaVectorLoops(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, kind := range dellaRowKinds {
		for _, n := range []int{1, 7, 8, 9, 15, 16, 17, 64, 100, 1000} {
			x := make([]float32, n)
			kind.fill(r, x)
			where := fmt.Sprintf("%s, n=%d", kind.name, n)

			k1, k2 := make([]uint32, n), make([]uint32, n)
			lo1, hi1 := dellaKeys(x, k1)
			lo2, hi2 := dellaKeysGo(x, k2)
			if lo1 != lo2 || hi1 != hi2 || !slices.Equal(k1, k2) {
				t.Fatalf("%s: dellaKeys differs from dellaKeysGo", where)
			}
			for _, shift := range []uint32{0, 3, 17} {
				b1, b2 := make([]uint32, n), make([]uint32, n)
				dellaBuckets(k1, lo1, shift, b1)
				dellaBucketsGo(k1, lo1, shift, b2)
				if !slices.Equal(b1, b2) {
					t.Fatalf("%s: dellaBuckets (shift %d) differs from dellaBucketsGo", where, shift)
				}
				for j, k := range k1 {
					if b2[j] != (k-lo1)>>shift+1 {
						t.Fatalf("%s: dellaBucketsGo's entry %d: %d, want %d", where, j, b2[j], (k-lo1)>>shift+1)
					}
				}
			}
			for _, j := range []int{0, 1, 15, 16, 17, n / 3, n - 17, n - 16, n - 15, n - 1} {
				if j < 0 || j >= n {
					continue
				}
				if a, b := dellaRank(k1, j), dellaRankGo(k1, j); a != b {
					t.Fatalf("%s: dellaRank(%d) = %d, dellaRankGo %d", where, j, a, b)
				}
			}
			// dellaSubKeys from zero lanes and from lanes carried over.
			for _, carry := range []float64{0, 0.375} {
				base := make([]float32, n)
				for i := range base {
					base[i] = float32(r.NormFloat64())
				}
				t1, t2 := make([]float32, n), make([]float32, n)
				k1s, k2s := make([]uint32, n), make([]uint32, n)
				var a1, a2 [8]float64
				for l := range a1 {
					a1[l], a2[l] = carry*float64(l), carry*float64(l)
				}
				lo1, hi1, ok1 := dellaSubKeys(t1, x, base, k1s, &a1)
				lo2, hi2, ok2 := dellaSubKeysGo(t2, x, base, k2s, &a2)
				if ok1 != ok2 || lo1 != lo2 || hi1 != hi2 || a1 != a2 || !slices.Equal(t1, t2) || !slices.Equal(k1s, k2s) {
					t.Fatalf("%s, carry %v: dellaSubKeys differs from dellaSubKeysGo", where, carry)
				}
				want, _ := dellaSubAbsSumGo(make([]float32, n), x, base)
				wlo, whi := dellaKeysGo(t2, make([]uint32, n))
				if carry == 0 && (!ok2 || dellaLanes(&a2) != want || lo2 != wlo || hi2 != whi) {
					t.Fatalf("%s: dellaSubKeysGo's sum %v (%v, %v), want %v (%v, %v)", where, dellaLanes(&a2), lo2, hi2, want, wlo, whi)
				}
				// With the kept sum of a previous row.
				prev := make([]float32, n)
				pw := make([]uint64, (n+63)/64)
				for i := range prev {
					prev[i] = float32(r.NormFloat64())
					if r.IntN(3) > 0 {
						pw[i>>6] |= 1 << (i & 63)
					}
				}
				var p1, p2 [8]float64
				for l := range a1 {
					a1[l], a2[l] = carry*float64(l), carry*float64(l)
					p1[l], p2[l] = carry*float64(l+1), carry*float64(l+1)
				}
				lo1, hi1, ok1 = dellaSubKeysKept(t1, x, base, k1s, &a1, prev, pw, &p1)
				lo2, hi2, ok2 = dellaSubKeysKeptGo(t2, x, base, k2s, &a2, prev, pw, &p2)
				if ok1 != ok2 || lo1 != lo2 || hi1 != hi2 || a1 != a2 || p1 != p2 || !slices.Equal(t1, t2) || !slices.Equal(k1s, k2s) {
					t.Fatalf("%s, carry %v: dellaSubKeysKept differs from dellaSubKeysKeptGo", where, carry)
				}
				var p3 [8]float64
				for l := range p3 {
					p3[l] = carry * float64(l+1)
				}
				if dellaKeptAbsAddGo(prev, pw, &p3); p3 != p2 {
					t.Fatalf("%s, carry %v: dellaSubKeysKeptGo's kept sum differs from dellaKeptAbsAddGo", where, carry)
				}
				for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1))} {
					y := slices.Clone(x)
					y[r.IntN(n)] = bad
					if _, _, ok := dellaSubKeys(t1, y, base, k1s, &a1); ok {
						t.Fatalf("%s: dellaSubKeys missed a %v", where, bad)
					}
					if _, _, ok := dellaSubKeysGo(t1, y, base, k1s, &a1); ok {
						t.Fatalf("%s: dellaSubKeysGo missed a %v", where, bad)
					}
					if _, _, ok := dellaSubKeysKept(t1, y, base, k1s, &a1, prev, pw, &p1); ok {
						t.Fatalf("%s: dellaSubKeysKept missed a %v", where, bad)
					}
				}
			}

			if a, b := dellaAbsSum(x), dellaAbsSumGo(x); math.Float64bits(a) != math.Float64bits(b) {
				t.Fatalf("%s: dellaAbsSum %v, dellaAbsSumGo %v", where, a, b)
			}
			base := make([]float32, n)
			for i := range base {
				base[i] = float32(r.NormFloat64())
			}
			t1, t2 := make([]float32, n), make([]float32, n)
			s1, ok1 := dellaSubAbsSum(t1, x, base)
			s2, ok2 := dellaSubAbsSumGo(t2, x, base)
			if !ok1 || !ok2 || math.Float64bits(s1) != math.Float64bits(s2) || !slices.Equal(t1, t2) {
				t.Fatalf("%s: dellaSubAbsSum (%v, %v) differs from dellaSubAbsSumGo (%v, %v)", where, s1, ok1, s2, ok2)
			}
			for i := range t2 {
				if t2[i] != x[i]-base[i] {
					t.Fatalf("%s: dellaSubAbsSumGo's τ[%d] = %v, want %v", where, i, t2[i], x[i]-base[i])
				}
			}
			if s := dellaAbsSum(t2); math.Float64bits(s) != math.Float64bits(s2) {
				t.Fatalf("%s: dellaSubAbsSum's sum %v, dellaAbsSum of τ %v", where, s2, s)
			}
			for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(-1))} {
				y := slices.Clone(x)
				y[r.IntN(n)] = bad
				if _, ok := dellaSubAbsSum(t1, y, base); ok {
					t.Fatalf("%s: dellaSubAbsSum missed a %v", where, bad)
				}
				if _, ok := dellaSubAbsSumGo(t1, y, base); ok {
					t.Fatalf("%s: dellaSubAbsSumGo missed a %v", where, bad)
				}
			}

			key, start := rng.Key(1, where, 0), uint64(r.IntN(1000))
			lo, hi := uint32(r.IntN(1<<23)), uint32(1<<23+r.IntN(1<<23))

			// The cell bounds arbitrary keys (sorted or not: the loops do
			// not rely on it), the shift as rowBits would choose it or not.
			var cellLo, cellHi [dellaCells]uint32
			for c := range dellaCells {
				cellLo[c], cellHi[c] = k1[r.IntN(n)], k1[r.IntN(n)]+uint32(r.IntN(3))
			}
			for _, shift := range []uint32{uint32(max(0, bits.Len32(hi-lo-1)-5)), 0, 23} {
				wa, wb := make([]uint64, (n+63)/64), make([]uint64, (n+63)/64)
				aa, ab := make([]uint64, (n+63)/64), make([]uint64, (n+63)/64)
				ua, ub := make([]uint32, n), make([]uint32, n)
				anyA := dellaDrawCells(key, start, lo, hi, &cellLo, &cellHi, shift, k1, ua, wa, aa)
				anyB := dellaDrawCellsGo(key, start, lo, hi, &cellLo, &cellHi, shift, k1, ub, wb, ab)
				if anyA != anyB || !slices.Equal(wa, wb) || !slices.Equal(aa, ab) || !slices.Equal(ua, ub) {
					t.Fatalf("%s, shift %d: dellaDrawCells differs from dellaDrawCellsGo", where, shift)
				}
				var anyWant bool
				for j := range n {
					x := uint32(rng.Bits(key, start+uint64(j)) >> 40)
					c := (x - lo) >> shift % dellaCells
					band := x >= lo && x < hi
					keep := x < lo || band && k1[j] >= cellHi[c]
					open := band && k1[j] >= cellLo[c] && k1[j] < cellHi[c]
					anyWant = anyWant || open
					if ub[j] != x || wb[j>>6]>>(j&63)&1 == 1 != keep || ab[j>>6]>>(j&63)&1 == 1 != open {
						t.Fatalf("%s, shift %d: dellaDrawCellsGo's entry %d: U %d, want %d", where, shift, j, ub[j], x)
					}
				}
				if anyB != anyWant {
					t.Fatalf("%s, shift %d: dellaDrawCellsGo reports %v", where, shift, anyB)
				}
			}
			w1, w2 := make([]uint64, (n+63)/64), make([]uint64, (n+63)/64)
			b1, b2 := make([]uint64, (n+63)/64), make([]uint64, (n+63)/64)
			u1, u2 := make([]uint32, n), make([]uint32, n)
			any1 := dellaDraw(key, start, lo, hi, u1, w1, b1)
			any2 := dellaDrawGo(key, start, lo, hi, u2, w2, b2)
			if any1 != any2 || !slices.Equal(w1, w2) || !slices.Equal(b1, b2) || !slices.Equal(u1, u2) {
				t.Fatalf("%s: dellaDraw differs from dellaDrawGo", where)
			}
			for j := range n {
				want := uint32(rng.Bits(key, start+uint64(j)) >> 40)
				kept, in := w2[j>>6]>>(j&63)&1 == 1, b2[j>>6]>>(j&63)&1 == 1
				if u2[j] != want || kept != (want < lo) || in != (want >= lo && want < hi) {
					t.Fatalf("%s: dellaDrawGo's entry %d: U %d kept %v band %v, want U %d", where, j, u2[j], kept, in, want)
				}
			}

			var a1, a2 [8]float64
			for l := range a1 {
				a1[l], a2[l] = float64(l)/3, float64(l)/3
			}
			dellaKeptAbsAdd(x, w1, &a1)
			dellaKeptAbsAddGo(x, w1, &a2)
			if a1 != a2 {
				t.Fatalf("%s: dellaKeptAbsAdd differs from dellaKeptAbsAddGo", where)
			}
			clear(a2[:])
			if dellaKeptAbsAddGo(x, w1, &a2); dellaLanes(&a2) != dellaKeptAbsSumGo(x, w1) {
				t.Fatalf("%s: dellaKeptAbsAddGo from 0 differs from dellaKeptAbsSumGo", where)
			}
			if a, b := dellaKeptAbsSum(x, w1), dellaKeptAbsSumGo(x, w1); math.Float64bits(a) != math.Float64bits(b) {
				t.Fatalf("%s: dellaKeptAbsSum %v, dellaKeptAbsSumGo %v", where, a, b)
			}
			applied := slices.Clone(x)
			dellaApplyBitsGo(applied, w1, 1)
			if a, b := dellaKeptAbsSum(x, w1), dellaAbsSum(applied); math.Float64bits(a) != math.Float64bits(b) {
				t.Fatalf("%s: dellaKeptAbsSum %v, dellaAbsSum of the kept entries %v", where, a, b)
			}

			for _, scale := range []float32{1, 1.75} {
				a, b := slices.Clone(x), slices.Clone(x)
				dellaApplyBits(a, w1, scale)
				dellaApplyBitsGo(b, w1, scale)
				if !slices.EqualFunc(a, b, func(p, q float32) bool { return math.Float32bits(p) == math.Float32bits(q) }) {
					t.Fatalf("%s, scale %v: dellaApplyBits differs from dellaApplyBitsGo", where, scale)
				}
			}
		}
	}
}

// TestDellaCellBounds: the cells' key bounds keep what the ranks keep:
// an entry of the band whose key is at least cellHi[c] has a rank of at
// least cellT[c+1], and one whose key is below cellLo[c] a rank below
// cellT[c], on rows of every kind and several row lengths and parameters.
func TestDellaCellBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	sc := dellaPool(0)
	for _, kind := range dellaRowKinds {
		for _, n := range []int{dellaCellMin, 100, 2048, 4099} {
			for _, pe := range []struct{ density, eps float64 }{{0.2, 0.15}, {0.5, 0.49}, {0.3, 1e-4}} {
				where := fmt.Sprintf("%s, n=%d, density %v ε %v", kind.name, n, pe.density, pe.eps)
				row := make([]float32, n)
				kind.fill(r, row)
				if sc.cap < n {
					sc = dellaPool(n)
				}
				thr := sc.thresholds(n, float32(pe.density-pe.eps), 2*float32(pe.eps))
				if sc.cells == 0 || sc.cells > dellaCells {
					t.Fatalf("%s: %d cells", where, sc.cells)
				}
				if sc.cellT[0] != 0 && thr[sc.cellT[0]-1] > thr[0] || sc.cellT[sc.cells] != uint32(n) {
					t.Fatalf("%s: cell ranks %v", where, sc.cellT[:sc.cells+1])
				}
				keys := sc.keys[:n]
				kmin, kmax := dellaKeys(row, keys)
				if kmin == kmax {
					continue // rowBits ranks by index
				}
				S, shift := sc.bounds(keys, kmin, kmax)
				sc.cellBounds(S, kmin, shift)
				rank := make([]uint32, n)
				for j := range n {
					rank[j] = dellaRankGo(keys, j)
				}
				for c := range sc.cells {
					if sc.cellLo[c] > sc.cellHi[c] {
						t.Fatalf("%s: cell %d: bounds %d > %d", where, c, sc.cellLo[c], sc.cellHi[c])
					}
					for j, k := range keys {
						if k >= sc.cellHi[c] && rank[j] < sc.cellT[c+1] || k < sc.cellLo[c] && rank[j] >= sc.cellT[c] {
							t.Fatalf("%s: cell %d [%d, %d): entry %d key %d rank %d, cell ranks %d, %d",
								where, c, sc.cellLo[c], sc.cellHi[c], j, k, rank[j], sc.cellT[c], sc.cellT[c+1])
						}
					}
				}
				// Every draw of the band falls in a cell whose ranks bound
				// the least keeping rank.
				for c := range sc.cells {
					u0 := thr[0] + uint32(c)<<sc.cellShift
					u1 := min(u0+1<<sc.cellShift, thr[n-1]) - 1
					rk := func(x uint32) uint32 {
						var q uint32
						for _, v := range thr {
							if v <= x {
								q++
							}
						}
						return q
					}
					if rk(u0) != sc.cellT[c] || rk(u1) > sc.cellT[c+1] {
						t.Fatalf("%s: cell %d: ranks %d, %d; cell ranks %d, %d", where, c, rk(u0), rk(u1), sc.cellT[c], sc.cellT[c+1])
					}
				}
			}
		}
	}
}

func TestDellaPrefix(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 5))
	for _, n := range []int{0, 1, 15, 16, 17, 33, 100, 2049} {
		s := make([]uint32, n)
		for i := range s {
			s[i] = uint32(r.IntN(50))
		}
		want := slices.Clone(s)
		var sum uint32
		for i, c := range want {
			sum += c
			want[i] = sum
		}
		got, twin := slices.Clone(s), slices.Clone(s)
		dellaPrefix(got)
		dellaPrefixGo(twin)
		if !slices.Equal(got, want) || !slices.Equal(twin, want) {
			t.Fatalf("n=%d: dellaPrefix %v, dellaPrefixGo %v, want %v", n, got, twin, want)
		}
	}
}

// TestDellaAbsSumOrder: the documented lane order, checked against a sum
// written out from the definition.
func TestDellaAbsSumOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	x := make([]float32, 37)
	for i := range x {
		x[i] = float32(math.Ldexp(r.NormFloat64(), r.IntN(60)-30))
	}
	var lane [8]float64
	for j, v := range x {
		lane[j%8] += math.Abs(float64(v))
	}
	want := ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))
	if got := dellaAbsSum(x); got != want {
		t.Fatalf("dellaAbsSum = %v, want %v", got, want)
	}
}

func TestDellaBitList(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	for _, n := range []int{1, 63, 64, 65, 300, 2048} {
		for _, density := range []int{0, 1, 3, 30, 64} { // set bits per 64
			bw := make([]uint64, (n+63)/64)
			var want []uint32
			for j := range n {
				if r.IntN(64) < density {
					bw[j>>6] |= 1 << (j & 63)
					want = append(want, uint32(j))
				}
			}
			list := make([]uint32, len(want)+2)
			if got := dellaBitList(bw, list); !slices.Equal(got, want) {
				t.Fatalf("n=%d, %d per 64: %v, want %v", n, density, got, want)
			}
		}
	}
}

func TestOrBitsAt(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 3))
	for _, n := range []int{1, 63, 64, 65, 130} {
		for _, off := range []int{0, 1, 63, 64, 70} {
			src := make([]uint64, (n+63)/64)
			for j := range n {
				if r.IntN(2) == 0 {
					src[j>>6] |= 1 << (j & 63)
				}
			}
			dst := make([]uint64, (off+n+63)/64+1)
			dst[0] = 1 // a bit before off stays
			orBitsAt(dst, off, src, n)
			for j := range len(dst) * 64 {
				got := dst[j>>6]>>(j&63)&1 == 1
				want := j == 0
				if j >= off && j < off+n {
					want = want || src[(j-off)>>6]>>((j-off)&63)&1 == 1
				}
				if got != want {
					t.Fatalf("n=%d off=%d: bit %d = %v, want %v", n, off, j, got, want)
				}
			}
		}
	}
}

// TestDellaThreadsAndDefinition: della and della_linear give the same bits
// on 1 and 2 threads, with and without rescale, per tensor and global, and
// della_linear (λ 1, no base) equals the definition on rows of every kind.
func TestDellaThreadsAndDefinition(t *testing.T) {
	const rows, cols = 24, 2500 // rows longer than a chunk's share: several chunks
	r := rand.New(rand.NewPCG(11, 12))
	tau := make([]float32, rows*cols)
	for i := range rows {
		dellaRowKinds[i%len(dellaRowKinds)].fill(r, tau[i*cols:(i+1)*cols])
	}
	for _, method := range []string{"della", "della_linear"} {
		for _, rescale := range []bool{true, false} {
			for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
				var outs [][]float32
				for _, threads := range []int{1, 2} {
					ts := shaped("blk.w", []int{rows, cols}, make([]float32, rows*cols), tau)
					p := Params{Lambda: 1, Density: 0.3, Epsilon: 0.2, Seed: 5, Rescale: rescale,
						Scope: scope, Pool: parallel.Pool{Threads: threads}}
					if err := Run(method, p, ts); err != nil {
						t.Fatal(err)
					}
					outs = append(outs, ts[0].Out.F32)
				}
				where := fmt.Sprintf("%s rescale=%v scope=%v", method, rescale, scope)
				if !slices.Equal(outs[0], outs[1]) {
					t.Fatalf("%s: 1 and 2 threads differ", where)
				}
				if method == "della_linear" && rescale {
					want := dellaExpected(tau, rows, cols, 0.3, 0.2, rng.Key(5, "blk.w", 0))
					if !slices.Equal(outs[0], want) {
						t.Fatalf("%s: differs from the definition", where)
					}
				}
			}
		}
	}
}

// TestDellaByRowsMatchesChunkPasses: the preparation a row at a time
// (dellaChunkRows, rows of a multiple of 8) gives the passes over the
// chunk's results bit for bit: outputs of della and della_linear with and
// without rescale, per tensor and global, on 1 and 2 threads, rows of
// every kind, transposed or not; and the same error for a NaN or an Inf.
func TestDellaByRowsMatchesChunkPasses(t *testing.T) {
	defer func(v bool) { dellaByRows = v }(dellaByRows)
	r := rand.New(rand.NewPCG(15, 16))
	for _, shape := range [][]int{{24, 2048}, {40, 104}, {3, 8}, {700, 16}, {5, 24, 2, 2}} {
		n := 1
		for _, d := range shape {
			n *= d
		}
		cols := n / shape[0]
		tau := make([]float32, n)
		base := make([]float32, n)
		for i := range shape[0] {
			dellaRowKinds[i%len(dellaRowKinds)].fill(r, tau[i*cols:(i+1)*cols])
		}
		for i := range base {
			base[i] = float32(r.NormFloat64())
		}
		models := make([][]float32, 3)
		for m := range models {
			models[m] = make([]float32, n)
			for i := range models[m] {
				models[m][i] = base[i] + tau[(i+m*cols)%n]*float32(m+1)
			}
		}
		for _, method := range []string{"della", "della_linear"} {
			for _, rescale := range []bool{true, false} {
				for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
					for _, transposed := range []bool{false, true} {
						for _, bad := range []float32{0, float32(math.NaN()), float32(math.Inf(-1))} {
							var outs [][]float32
							var errs []string
							for _, byRows := range []bool{true, false} {
								dellaByRows = byRows
								ms := make([][]float32, len(models))
								for m := range ms {
									ms[m] = slices.Clone(models[m])
								}
								if bad != 0 {
									ms[1][n/2] = bad
								}
								ts := shaped("blk.w", shape, slices.Clone(base), ms...)
								if transposed {
									ts[0].Transposed = true
								}
								p := Params{Lambda: 0.9, Density: 0.3, Epsilon: 0.2, Seed: 5, Rescale: rescale,
									Scope: scope, Pool: parallel.Pool{Threads: 2}}
								err := Run(method, p, ts)
								errs = append(errs, fmt.Sprint(err))
								outs = append(outs, ts[0].Out.F32)
							}
							where := fmt.Sprintf("%v %s rescale=%v scope=%v transposed=%v bad=%v", shape, method, rescale, scope, transposed, bad)
							if errs[0] != errs[1] {
								t.Fatalf("%s: errors %q and %q", where, errs[0], errs[1])
							}
							if bad == 0 && !slices.EqualFunc(outs[0], outs[1], func(a, b float32) bool { return math.Float32bits(a) == math.Float32bits(b) }) {
								t.Fatalf("%s: by rows and by chunk passes differ", where)
							}
						}
					}
				}
			}
		}
	}
}
