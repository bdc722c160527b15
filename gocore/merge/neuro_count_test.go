package merge

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// refCountSums is the counting pass written plainly (magnitudes from
// vec.AbsDiff's arithmetic; the sums in vec.SumF64's documented order,
// 32 lanes by index mod 32 folded by halves): the reference whose bits
// countSums and vec.SumF64 must give.
func refCountSums(x, b []float32, lo, hi uint32) (above int64, total, sumAbove float64, cands []uint32) {
	var all, abv [32]float64
	k := 0
	for j := range x {
		v := float32(math.Abs(float64(x[j] - b[j])))
		a := math.Float32bits(v)
		all[j%32] += float64(v)
		if a > hi {
			above++
			abv[k%32] += float64(v)
			k++
		}
		if a >= lo && a <= hi {
			cands = append(cands, a)
		}
	}
	fold := func(s [32]float64) float64 {
		for _, h := range []int{16, 8, 4, 2} {
			for i := 0; i < h; i++ {
				s[i] += s[i+h]
			}
		}
		return s[0] + s[1]
	}
	return above, fold(all), fold(abv), cands
}

// TestCountSums: the vector kernel against its scalar twin (every output,
// bit for bit) and both, with vec.SumF64, against the plain loop, for
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
				abv, ab := make([]float32, n), make([]float32, n)
				prefix := []uint32{7}
				k, total, cands, ok := countSums(xx, b, win.lo, win.hi, slices.Clone(prefix), abv)
				var sl vec.SumLanes
				kG, candsG, okG := countSumsGo(xx, b, win.lo, win.hi, slices.Clone(prefix), ab, &sl)
				name := win.name
				if ok != (bad == 0 || n == 0) || okG != ok {
					t.Fatalf("n %d %s bad %v: finite %v, twin %v", n, name, bad, ok, okG)
				}
				if !ok {
					continue
				}
				if k != kG || !slices.Equal(cands, candsG) ||
					math.Float64bits(total) != math.Float64bits(sl.Sum()) || !slices.Equal(bitsOf(abv[:k]), bitsOf(ab[:k])) {
					t.Fatalf("n %d %s: vector (k %d, %d cands, total %v) differs from its twin (%d, %d)",
						n, name, k, len(cands), total, kG, len(candsG))
				}
				sumAbove := vec.SumF64(abv[:k])
				oAbove, oTotal, oSum, oCands := refCountSums(xx, b, win.lo, win.hi)
				if int64(k) != oAbove || !slices.Equal(cands[1:], oCands) ||
					math.Float64bits(total) != math.Float64bits(oTotal) || math.Float64bits(sumAbove) != math.Float64bits(oSum) {
					t.Fatalf("n %d %s: above %d total %v sum %v (%d cands), plain loop %d %v %v (%d)",
						n, name, k, total, sumAbove, len(cands)-1, oAbove, oTotal, oSum, len(oCands))
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
