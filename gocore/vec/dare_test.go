package vec

import (
	"math/rand/v2"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/rng"
)

func TestDareThresholdMatchesUniform(t *testing.T) {
	for _, d := range []float32{1e-7, 0.1, 0.2, 0.3, 1.0 / 3, 0.5, 0.9, 0.9999999, 1} {
		thr := DareThreshold(d)
		for _, u := range []uint64{0, 1, thr - 1, thr, thr + 1, 1<<24 - 1} {
			if u >= 1<<24 {
				continue
			}
			uniform := float32(u) * (1.0 / (1 << 24))
			if (uniform < d) != (u < thr) {
				t.Errorf("d=%v: u=%d: Uniform < d is %v, u < thr(%d) is %v", d, u, uniform < d, thr, u < thr)
			}
		}
	}
}

func TestDareDropMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, n := range []int{0, 1, 7, 8, 9, 63, 1000} {
		for _, d := range []float32{0.1, 0.5, 0.9, 1} {
			for _, start := range []uint64{0, 5, 16384, 1<<40 + 3} {
				key := rng.Key(uint64(n), "layer.weight", int(start%3))
				tau := make([]float32, n)
				for j := range tau {
					tau[j] = float32(r.NormFloat64())
				}
				got, want := append([]float32(nil), tau...), append([]float32(nil), tau...)
				DareDrop(got, key, start, DareThreshold(d), 1/d)
				for j := range want { // the definition, through rng.Uniform
					if rng.Uniform(key, start+uint64(j)) < d {
						want[j] *= 1 / d
					} else {
						want[j] = 0
					}
				}
				sameBits(t, "DareDrop", got, want)
			}
		}
	}
}
