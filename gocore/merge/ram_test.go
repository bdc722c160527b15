package merge

import (
	"math"
	"strings"
	"testing"
)

// ramRef is mergekit's ram entry by entry in float64.
func ramRef(base float32, models []float32, eps []float64) float64 {
	var s float64
	c := 0
	for m, x := range models {
		if math.Abs(float64(x-base)) > eps[m] {
			s += float64(x - base)
			c++
		}
	}
	if c == 0 {
		return float64(base)
	}
	return float64(base) + s/float64(c)
}

func TestRAM(t *testing.T) {
	base := []float32{1, 1, 1, 1, 1, 0, -2, 0.5}
	a := []float32{1, 1.5, 1.5, 1.000001, 3, 0, -1, 0.7}
	b := []float32{1, 1, 0.5, 1.000002, 2, 1e-6, -3, 0.2}
	c := []float32{1, 1, 1, 1, -1, 0, -2.5, 0.6}
	cases := []struct {
		name string
		eps  []float64
	}{
		{"default epsilon", nil},
		{"coarse epsilon", []float64{0.6, 0.6, 0.6}},
		{"per-model epsilon", []float64{1e-5, 0.9, 0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("ram")
			if p.Epsilon != 1e-5 {
				t.Fatalf("default epsilon %v", p.Epsilon)
			}
			eps := tc.eps
			if eps == nil {
				eps = []float64{1e-5, 1e-5, 1e-5}
			} else {
				p.Epsilons = eps
			}
			ts := one("w", base, a, b, c)
			if err := Run("ram", p, ts); err != nil {
				t.Fatal(err)
			}
			for j, got := range ts[0].Out.F32 {
				want := ramRef(base[j], []float32{a[j], b[j], c[j]}, eps)
				if math.Abs(float64(got)-want) > 4e-7*math.Max(1, math.Abs(want)) {
					t.Fatalf("entry %d: got %v, want %v", j, got, want)
				}
			}
		})
	}
	// One model counting takes its τ whole: θ₀ + τ is exactly its θ here.
	ts := one("w", []float32{0, 0}, []float32{3, 0}, []float32{0, -7})
	if err := Run("ram", DefaultParams("ram"), ts); err != nil {
		t.Fatal(err)
	}
	if o := ts[0].Out.F32; o[0] != 3 || o[1] != -7 {
		t.Fatalf("got %v", o)
	}
}

func TestRAMInput(t *testing.T) {
	_, bad := Resolve("ram", 2, Values{Global: map[string]any{"epsilon": -1.0}})
	if got := strings.Join(Format(bad, NameWhere), "; "); !strings.Contains(got, "epsilon must be ≥ 0, got -1") {
		t.Fatalf("problems %q", got)
	}
	if p, bad := Resolve("ram", 2, Values{}); len(bad) > 0 || p.Epsilon != 1e-5 {
		t.Fatalf("defaults %v, %v", p.Epsilon, bad)
	}
	if p := DefaultParams("della"); p.Epsilon != 0.15 {
		t.Fatalf("della's epsilon changed: %v", p.Epsilon)
	}
}
