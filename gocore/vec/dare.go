package vec

import "github.com/npsfuse/npsfuse/gocore/rng"

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
