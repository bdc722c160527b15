package vec

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/rng"
)

// DareThreshold is the integer form of a DARE keep probability d ∈ (0, 1]:
// rng.Uniform(k, i) < d exactly when Bits(k, i)>>40 < DareThreshold(d),
// since Uniform is that 24-bit integer times 2⁻²⁴ (exact in float32).
func DareThreshold(d float32) uint64 {
	t := float64(d) * (1 << 24) // exact: d has a 24-bit significand
	u := uint64(t)
	if float64(u) < t {
		u++
	}
	return u
}

// DareDrop is DARE's random drop over one slice of a task vector
// (Yu et al. 2024, eq. 2): entry j is kept and multiplied by scale when
// rng.Bits(key, start+j)>>40 < thr (see DareThreshold), and set to +0
// otherwise.
func DareDrop(tau []float32, key, start, thr uint64, scale float32) {
	dareDrop(tau, key, start, thr, scale)
}

func dareDropGo(tau []float32, key, start, thr uint64, scale float32) {
	for j := range tau {
		if rng.Bits(key, start+uint64(j))>>40 < thr {
			tau[j] *= scale
		} else {
			tau[j] = 0
		}
	}
}

// DareSums returns DARE's rescale sums over one slice of a task vector,
// τ = x − b (float32 x32, b32, or bfloat16 x16, b16 when x16 is not nil;
// entry j is element start+j of stream key): Σ|τ| and Σ|τ̂|, τ̂ the entries
// DareDrop(τ, key, start, thr, 1) keeps, each summed in float64 over 8
// lanes by index mod 8 and folded as ((s₀+s₁)+(s₂+s₃))+((s₄+s₅)+(s₆+s₇)).
// One pass reads the inputs where they are stored. ok is false, with the
// sums unspecified, when some τ entry is not finite.
func DareSums(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64) (before, after float64, ok bool) {
	if x16 != nil {
		if len(b16) < len(x16) {
			panic("vec.DareSums: base shorter than the model")
		}
	} else if len(b32) < len(x32) {
		panic("vec.DareSums: base shorter than the model")
	}
	return dareSums(x32, b32, x16, b16, key, start, thr)
}

// dareSumsGo is DareSums' scalar twin.
func dareSumsGo(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64) (before, after float64, ok bool) {
	var bs, as [8]float64
	return dareSumsTail(x32, b32, x16, b16, key, start, thr, 0, &bs, &as)
}

// dareSumsTail adds entries j ≥ from to the lanes' sums and folds them.
func dareSumsTail(x32, b32 []float32, x16, b16 []uint16, key, start, thr uint64, from int, bs, as *[8]float64) (before, after float64, ok bool) {
	n := max(len(x32), len(x16))
	for j := from; j < n; j++ {
		var x, b float32
		if x16 != nil {
			x, b = math.Float32frombits(uint32(x16[j])<<16), math.Float32frombits(uint32(b16[j])<<16)
		} else {
			x, b = x32[j], b32[j]
		}
		t := x - b
		if math.IsNaN(float64(t)) || math.IsInf(float64(t), 0) {
			return 0, 0, false
		}
		a := math.Abs(float64(t))
		bs[j&7] += a
		if rng.Bits(key, start+uint64(j))>>40 < thr { // a dropped entry adds +0
			as[j&7] += a
		}
	}
	fold := func(s *[8]float64) float64 { return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) }
	return fold(bs), fold(as), true
}
