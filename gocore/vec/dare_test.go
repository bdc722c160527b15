package vec

import (
	"math"
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

// TestDareSumsTwin compares DareSums with its scalar twin bit for bit
// (float32 and bfloat16, lengths around the vector width, densities to 1);
// gocore/merge compares both with the separate loops they stand for.
func TestDareSumsTwin(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 5, 8, 17, 4099} {
		for _, thr := range []uint64{DareThreshold(0.2), DareThreshold(0.9), 1 << 24} {
			x, b := make([]float32, n), make([]float32, n)
			x16, b16 := make([]uint16, n), make([]uint16, n)
			for j := range x {
				b[j] = float32(r.NormFloat64())
				x[j] = b[j] + float32(0.01*r.NormFloat64())
				x16[j], b16[j] = BF16Bits(x[j]), BF16Bits(b[j])
			}
			for _, wide := range []bool{false, true} {
				var gb, ga, wb, wa float64
				var ok, wok bool
				if wide {
					gb, ga, ok = DareSums(nil, nil, x16, b16, 77, 1000, thr)
					wb, wa, wok = dareSumsGo(nil, nil, x16, b16, 77, 1000, thr)
				} else {
					gb, ga, ok = DareSums(x, b, nil, nil, 77, 1000, thr)
					wb, wa, wok = dareSumsGo(x, b, nil, nil, 77, 1000, thr)
				}
				if ok != wok || math.Float64bits(gb) != math.Float64bits(wb) || math.Float64bits(ga) != math.Float64bits(wa) {
					t.Fatalf("n=%d thr=%d bf16=%v: (%v, %v, %v), twin (%v, %v, %v)", n, thr, wide, gb, ga, ok, wb, wa, wok)
				}
			}
		}
	}
}
