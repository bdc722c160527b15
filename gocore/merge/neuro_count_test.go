package merge

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// oldCountSums is the counting loop countChunk ran for NeuroMerging before
// countSums (magnitudes from vec.AbsDiff's arithmetic): the reference
// whose sums' bits countSums and sumMags must give.
func oldCountSums(x, b []float32, lo, hi uint32) (above int64, total, sumAbove float64, cands []uint32) {
	var s0, s1 float64
	for j := range x {
		v := float32(math.Abs(float64(x[j] - b[j])))
		a := math.Float32bits(v)
		gt := (uint64(hi) - uint64(a)) >> 63
		above += int64(gt)
		f := float64(v)
		if j&1 == 0 {
			s0 += f
		} else {
			s1 += f
		}
		sumAbove += math.Float64frombits(math.Float64bits(f) & -gt)
		if a >= lo && a <= hi {
			cands = append(cands, a)
		}
	}
	return above, s0 + s1, sumAbove, cands
}

// TestCountSums: the vector kernel against its scalar twin (every output,
// bit for bit) and both, with sumMags, against the former loop, for
// windows around the median, whole-range, count-only and empty ones,
// lengths around the vector width, and non-finite inputs.
func TestCountSums(t *testing.T) {
	// The 16-lane loop where the CPU has AVX-512, and the 8-lane one.
	defer func(v bool) { countSums512 = v }(countSums512)
	for _, wide := range []bool{countSums512, false} {
		countSums512 = wide
		testCountSums(t)
	}
}

func testCountSums(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	for _, n := range []int{0, 1, 7, 8, 9, 15, 16, 17, 100, 1023, 4096 + 5, 50001} {
		b := make([]float32, n)
		x := make([]float32, n)
		for j := range x {
			b[j] = float32(r.NormFloat64())
			// Magnitudes over several binades, so that the sums round
			// and their order shows in the bits.
			x[j] = b[j] + float32(0.01*r.NormFloat64()*math.Exp2(float64(r.IntN(12)-6)))
			if j%37 == 5 {
				x[j] = b[j] // a zero magnitude
			}
		}
		med := uint32(math.Float32bits(0.00674)) // |N(0, 0.01²)|'s median
		for _, win := range []struct {
			name   string
			lo, hi uint32
		}{
			{"median", med - 3000, med + 3000},
			{"whole", 0, math.MaxUint32},
			{"count only", math.MaxUint32, math.MaxUint32},
			{"empty (lo > hi)", med + 1, med},
			{"hi beyond magnitudes", med, 0x80000005},
			{"zero", 0, 0},
		} {
			for _, bad := range []float32{0, float32(math.NaN()), float32(math.Inf(-1))} {
				xx := slices.Clone(x)
				if bad != 0 && n > 0 {
					xx[n/2] = bad
				}
				mags, abv := make([]float32, n), make([]float32, n)
				mg, ab := make([]float32, n), make([]float32, n)
				prefix := []uint32{7}
				above, k, cands, ok := countSums(xx, b, win.lo, win.hi, slices.Clone(prefix), mags, abv)
				aboveG, kG, candsG, okG := countSumsGo(xx, b, win.lo, win.hi, slices.Clone(prefix), mg, ab)
				name := win.name
				if ok != (bad == 0 || n == 0) || okG != ok {
					t.Fatalf("n %d %s bad %v: finite %v, twin %v", n, name, bad, ok, okG)
				}
				if !ok {
					continue
				}
				if above != aboveG || k != kG || !slices.Equal(cands, candsG) ||
					!slices.Equal(bitsOf(mags), bitsOf(mg)) || !slices.Equal(bitsOf(abv[:k]), bitsOf(ab[:k])) {
					t.Fatalf("n %d %s: vector (above %d, k %d, %d cands) differs from its twin (%d, %d, %d)",
						n, name, above, k, len(cands), aboveG, kG, len(candsG))
				}
				total, sumAbove := sumMags(mags, abv[:k])
				oAbove, oTotal, oSum, oCands := oldCountSums(xx, b, win.lo, win.hi)
				if above != oAbove || !slices.Equal(cands[1:], oCands) ||
					math.Float64bits(total) != math.Float64bits(oTotal) || math.Float64bits(sumAbove) != math.Float64bits(oSum) {
					t.Fatalf("n %d %s: above %d total %v sum %v (%d cands), former loop %d %v %v (%d)",
						n, name, above, total, sumAbove, len(cands)-1, oAbove, oTotal, oSum, len(oCands))
				}
			}
		}
	}
}

func bitsOf(x []float32) []uint32 {
	b := make([]uint32, len(x))
	for i, v := range x {
		b[i] = math.Float32bits(v)
	}
	return b
}

// TestSumMags2: the two-window loop gives each window's sumMags bits, for
// packed lists shorter and longer than half the magnitudes.
func TestSumMags2(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 5))
	for _, n := range []int{0, 1, 2, 3, 9, 100, 1001} {
		ma, mb := make([]float32, n), make([]float32, n)
		aa, ab := make([]float32, n), make([]float32, n)
		for _, x := range [][]float32{ma, mb, aa, ab} {
			for j := range x {
				x[j] = float32(r.ExpFloat64() * math.Exp2(float64(r.IntN(30)-15)))
			}
		}
		for _, ks := range [][2]int{{0, 0}, {n, n}, {n / 2, n}, {n, n / 3}, {n / 3, n / 2}, {(n + 1) / 2, n / 2}} {
			ta, sa, tb, sb := sumMags2(ma, aa[:ks[0]], mb, ab[:ks[1]])
			wa, wsa := sumMags(ma, aa[:ks[0]])
			wb, wsb := sumMags(mb, ab[:ks[1]])
			for i, p := range [][2]float64{{ta, wa}, {sa, wsa}, {tb, wb}, {sb, wsb}} {
				if math.Float64bits(p[0]) != math.Float64bits(p[1]) {
					t.Fatalf("n %d k %v: sum %d is %v, sumMags %v", n, ks, i, p[0], p[1])
				}
			}
		}
	}
}
