package search

import (
	"fmt"
	"math"
)

// Float is the element type of the generic vector operators.
type Float interface{ ~float32 | ~float64 }

// DiffMutate writes the differential mutation dst[j] = base[j] + f·(a[j] − b[j])
// for every j (Storn & Price 1997). DE/rand/1 uses base = x_r1, a = x_r2,
// b = x_r3; DE/best/1 uses base = x_best, a = x_r1, b = x_r2.
// All slices must have the same length (it panics otherwise). dst may alias
// any input: each element is read before it is written. The product is
// rounded to T before the addition, which forbids fused multiply-add, so the
// result is identical on every architecture. O(len(dst)).
func DiffMutate[T Float](dst, base, a, b []T, f T) {
	n := len(dst)
	if len(base) != n || len(a) != n || len(b) != n {
		panic(fmt.Sprintf("search: DiffMutate: lengths %d, %d, %d, %d differ", n, len(base), len(a), len(b)))
	}
	for j := range dst {
		dst[j] = base[j] + T(f*(a[j]-b[j]))
	}
}

// CurrentToBestMutate writes the DE/current-to-best/1 donor
// dst[j] = cur[j] + f·(best[j] − cur[j]) + f·(a[j] − b[j]) (Storn & Price 1997;
// a = x_r1, b = x_r2). Lengths must match (it panics otherwise); dst may alias
// any input. Each product is rounded to T before addition (no fused
// multiply-add), left to right. O(len(dst)).
func CurrentToBestMutate[T Float](dst, cur, best, a, b []T, f T) {
	n := len(dst)
	if len(cur) != n || len(best) != n || len(a) != n || len(b) != n {
		panic(fmt.Sprintf("search: CurrentToBestMutate: lengths %d, %d, %d, %d, %d differ", n, len(cur), len(best), len(a), len(b)))
	}
	for j := range dst {
		c := cur[j]
		dst[j] = c + T(f*(best[j]-c)) + T(f*(a[j]-b[j]))
	}
}

// BinomialMask fills mask for binomial crossover with rate cr: mask[j] is true
// (take the donor's element) when u_j < cr or j == j_rand. With forced, j_rand
// is drawn first as rng.IntN(len(mask)); without it (as CADE's authors do) no
// index is forced and a trial may equal its target. Then exactly one
// rng.Float64 is drawn per element in index order, also for j_rand, so the
// number of draws is len(mask) (+1 when forced) whatever the outcome. It
// returns j_rand, or −1 when not forced or len(mask) == 0. O(len(mask)).
func BinomialMask(mask []bool, cr float64, forced bool, rng *RNG) int {
	jr := -1
	if forced && len(mask) > 0 {
		jr = rng.IntN(len(mask))
	}
	for j := range mask {
		mask[j] = rng.Float64() < cr || j == jr
	}
	return jr
}

// Crossover writes dst[j] = donor[j] where mask[j], else target[j]. Lengths
// must match (it panics otherwise); dst may alias target or donor. O(len(dst)).
func Crossover[T Float](dst, target, donor []T, mask []bool) {
	n := len(dst)
	if len(target) != n || len(donor) != n || len(mask) != n {
		panic(fmt.Sprintf("search: Crossover: lengths %d, %d, %d, %d differ", n, len(target), len(donor), len(mask)))
	}
	for j := range dst {
		if mask[j] {
			dst[j] = donor[j]
		} else {
			dst[j] = target[j]
		}
	}
}

// PickDistinct fills dst with len(dst) distinct indices drawn uniformly
// without replacement from {0, …, n−1} \ {exclude} (exclude < 0 excludes
// nothing). Draw k uses rng.IntN(available) mapped to the k-th unused index
// in increasing order, so it consumes len(dst) IntN draws. It panics when
// fewer than len(dst) indices are available. O(len(dst)²).
func PickDistinct(rng *RNG, n, exclude int, dst []int) {
	avail := n
	if exclude >= 0 && exclude < n {
		avail--
	}
	if len(dst) > avail {
		panic(fmt.Sprintf("search: PickDistinct: %d indices wanted from %d available", len(dst), avail))
	}
	// used holds the excluded indices in increasing order.
	used := make([]int, 0, len(dst)+1)
	if exclude >= 0 && exclude < n {
		used = append(used, exclude)
	}
	for k := range dst {
		u := rng.IntN(avail - k)
		pos := 0
		for pos < len(used) && u >= used[pos] {
			u++
			pos++
		}
		dst[k] = u
		used = append(used, 0)
		copy(used[pos+1:], used[pos:])
		used[pos] = u
	}
}

// RepairClip projects x onto the box: x[j] = min(max(x[j], lo[j]), hi[j]).
// lo and hi must have len(x) (it panics otherwise) with lo[j] <= hi[j]; NaN
// elements become lo[j]. In place, O(len(x)).
func RepairClip[T Float](x, lo, hi []T) {
	if len(lo) != len(x) || len(hi) != len(x) {
		panic(fmt.Sprintf("search: RepairClip: lengths %d, %d, %d differ", len(x), len(lo), len(hi)))
	}
	for j, v := range x {
		switch {
		case v >= lo[j] && v <= hi[j]:
		case v > hi[j]:
			x[j] = hi[j]
		default: // below lo, or NaN
			x[j] = lo[j]
		}
	}
}

// RepairReflect mirrors out-of-box elements back into the box at the violated
// bound (x < lo becomes lo + (lo − x), x > hi becomes hi − (x − hi)); an
// overshoot larger than the width w = hi − lo folds repeatedly, i.e. the
// coordinate is mapped with period 2w. A zero width gives lo; NaN or infinite
// elements give lo. The result is finally clipped against rounding. In place,
// O(len(x)); lengths must match (it panics otherwise).
func RepairReflect[T Float](x, lo, hi []T) {
	if len(lo) != len(x) || len(hi) != len(x) {
		panic(fmt.Sprintf("search: RepairReflect: lengths %d, %d, %d differ", len(x), len(lo), len(hi)))
	}
	for j, v := range x {
		l, h := lo[j], hi[j]
		if v >= l && v <= h {
			continue
		}
		fv, fl, fh := float64(v), float64(l), float64(h)
		w := fh - fl
		var r float64
		switch {
		case math.IsNaN(fv) || math.IsInf(fv, 0) || w <= 0:
			r = fl
		case fv < fl && fl-fv <= w:
			r = fl + (fl - fv)
		case fv > fh && fv-fh <= w:
			r = fh - (fv - fh)
		default:
			t := math.Mod(fv-fl, 2*w)
			if t < 0 {
				t += 2 * w
			}
			if t > w {
				t = 2*w - t
			}
			r = fl + t
		}
		y := T(r)
		if y < l {
			y = l
		} else if y > h {
			y = h
		}
		x[j] = y
	}
}
