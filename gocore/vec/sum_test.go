package vec

import (
	"math"
	"math/rand/v2"
	"testing"
)

// SumF64 equals its scalar twin bit for bit (the vector loop in the SIMD
// build) and the order its doc gives, written out here on its own, for
// lengths around the 32-entry step and values over a wide range of
// magnitudes (where the order shows in the last bits).
func TestSumF64(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, n := range []int{0, 1, 7, 31, 32, 33, 64, 100, 4099, 16384} {
		x := make([]float32, n)
		for j := range x {
			x[j] = float32(math.Ldexp(r.Float64(), r.IntN(60)-30))
		}
		got := SumF64(x)
		if twin := sumF64Go(x); math.Float64bits(got) != math.Float64bits(twin) {
			t.Fatalf("n=%d: %v, scalar twin %v (accelerated=%v)", n, got, twin, Accelerated())
		}
		var lanes [32]float64
		for j, v := range x {
			lanes[j%32] += float64(v)
		}
		for _, h := range []int{16, 8, 4, 2} {
			for i := 0; i < h; i++ {
				lanes[i] += lanes[i+h]
			}
		}
		if want := lanes[0] + lanes[1]; math.Float64bits(got) != math.Float64bits(want) {
			t.Fatalf("n=%d: %v, the documented order gives %v", n, got, want)
		}
		var plain float64
		for _, v := range x {
			plain += float64(v)
		}
		if n > 0 && math.Abs(got-plain) > 1e-12*math.Abs(plain) {
			t.Fatalf("n=%d: %v, far from the sequential sum %v", n, got, plain)
		}
	}
	inf := []float32{1, float32(math.Inf(1)), 2}
	if s := SumF64(append(make([]float32, 40), inf...)); !math.IsInf(s, 1) {
		t.Fatalf("a sum with +Inf is %v", s)
	}
}

func BenchmarkSumF64(b *testing.B) {
	x := make([]float32, 16384)
	for j := range x {
		x[j] = float32(j%97) * 0.01
	}
	b.SetBytes(int64(4 * len(x)))
	for b.Loop() {
		SumF64(x)
	}
}
