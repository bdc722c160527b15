package vec

import (
	"math"
	"testing"
)

// ulpDiff is how many float32 steps separate got from the exact want.
func ulpDiff(got float32, want float64) float64 {
	w := float32(want)
	if math.IsInf(float64(w), 0) || math.IsInf(float64(got), 0) {
		if got == w {
			return 0
		}
		return math.Inf(1)
	}
	ulp := math.Nextafter32(float32(math.Abs(float64(w))), float32(math.Inf(1))) - float32(math.Abs(float64(w)))
	return math.Abs(float64(got)-want) / float64(ulp)
}

// expTanhInputs are float32 values spread over [lo, hi] by their bits
// (every step-th float32 of each sign), plus the ends.
func expTanhInputs(lo, hi float32, step uint32) []float32 {
	xs := []float32{lo, hi, 0, float32(math.Copysign(0, -1))}
	for b := uint32(0); b < 0x7f800000; b += step {
		for _, x := range []float32{math.Float32frombits(b), -math.Float32frombits(b)} {
			if x >= lo && x <= hi {
				xs = append(xs, x)
			}
		}
	}
	return xs
}

// TestExp32Accuracy checks Exp32 against math.Exp: within 2 ulps over
// [−86, 88.72], +Inf above, e^−86 below, and +Inf for NaN.
func TestExp32Accuracy(t *testing.T) {
	worst, at := 0.0, float32(0)
	for _, x := range expTanhInputs(-86, 88.72, 997) {
		if d := ulpDiff(Exp32(x), math.Exp(float64(x))); d > worst {
			worst, at = d, x
		}
	}
	t.Logf("Exp32: worst %.2f ulp at %g", worst, at)
	if worst > 2 {
		t.Fatalf("Exp32(%g) is %.2f ulps from math.Exp, want ≤ 2", at, worst)
	}
	cases := []struct {
		x, want float32
	}{
		{88.8, float32(math.Inf(1))},
		{1000, float32(math.Inf(1))},
		{float32(math.Inf(1)), float32(math.Inf(1))},
		{float32(math.NaN()), float32(math.Inf(1))},
		{-1000, Exp32(-86)},
		{float32(math.Inf(-1)), Exp32(-86)},
		{0, 1},
	}
	for _, c := range cases {
		if got := Exp32(c.x); got != c.want {
			t.Errorf("Exp32(%g) = %g, want %g", c.x, got, c.want)
		}
	}
	if d := ulpDiff(Exp32(-86), math.Exp(-86)); d > 2 {
		t.Errorf("Exp32(-86) is %.2f ulps off", d)
	}
}

// TestTanh32Accuracy checks Tanh32 against math.Tanh over every sign and
// magnitude: within 2 ulps, odd, ±1 for large |y|.
func TestTanh32Accuracy(t *testing.T) {
	worst, at := 0.0, float32(0)
	for _, y := range expTanhInputs(-math.MaxFloat32, math.MaxFloat32, 613) {
		got := Tanh32(y)
		if d := ulpDiff(got, math.Tanh(float64(y))); d > worst {
			worst, at = d, y
		}
		if Tanh32(-y) != -got {
			t.Fatalf("Tanh32(-%g) = %g, want %g", y, Tanh32(-y), -got)
		}
	}
	t.Logf("Tanh32: worst %.2f ulp at %g", worst, at)
	if worst > 2 {
		t.Fatalf("Tanh32(%g) is %.2f ulps from math.Tanh, want ≤ 2", at, worst)
	}
	for _, c := range []struct{ y, want float32 }{
		{0, 0}, {20, 1}, {-20, -1}, {float32(math.Inf(1)), 1}, {float32(math.Inf(-1)), -1},
	} {
		if got := Tanh32(c.y); got != c.want {
			t.Errorf("Tanh32(%g) = %g, want %g", c.y, got, c.want)
		}
	}
	if z := Tanh32(float32(math.Copysign(0, -1))); math.Float32bits(z) != 1<<31 {
		t.Errorf("Tanh32(-0) = %g, want -0", z)
	}
}
