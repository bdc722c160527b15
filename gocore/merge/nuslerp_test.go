package merge

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// nuslerpRef is mergekit's flattened nuslerp written on the vectors in
// float64: τ_t = float32(θ_t − θ₀), as both form them.
func nuslerpRef(base, a, b []float32, w1, w2 float64) []float64 {
	n := len(base)
	t := 0.5
	if math.Abs(w1+w2) >= 1e-6 {
		t = w2 / (w1 + w2)
	}
	x, y := make([]float64, n), make([]float64, n)
	for j := range n {
		x[j], y[j] = float64(a[j]-base[j]), float64(b[j]-base[j])
	}
	nx, ny := math.Max(math.Sqrt(dotF64(x, x)), 1e-7), math.Max(math.Sqrt(dotF64(y, y)), 1e-7)
	cos := math.Min(math.Max(dotF64(x, y)/(nx*ny), -1), 1)
	out := make([]float64, n)
	for j := range n {
		if 1-cos*cos <= 1e-16 {
			out[j] = float64(base[j]) + (1-t)*x[j] + t*y[j]
			continue
		}
		th := math.Acos(cos)
		out[j] = float64(base[j]) + (math.Sin((1-t)*th)*x[j]+math.Sin(t*th)*y[j])/math.Sin(th)
	}
	return out
}

func TestNuslerp(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	base := randVec(r, 40000, 0.02) // three chunks
	ft := func() []float32 {
		v := randVec(r, len(base), 0.02)
		for j := range v {
			v[j] += base[j]
		}
		return v
	}
	a, b := ft(), ft()
	small := []float32{1, 2, 3, -1}
	cases := []struct {
		name string
		base []float32
		x, y []float32
		w    []float32
	}{
		{"equal weights", base, a, b, nil},
		{"t = 0.75", base, a, b, []float32{1, 3}},
		{"weights summing to 0: t = 0.5", base, a, b, []float32{2, -2}},
		{"colinear: the lerp", small, []float32{2, 3, 4, 0}, []float32{3, 4, 5, 1}, []float32{1, 2}},
		{"antiparallel: the lerp", small, []float32{2, 3, 4, 0}, []float32{0, 1, 2, -2}, []float32{1, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("nuslerp")
			p.Weights = tc.w
			ts := one("blk.0.w", tc.base, tc.x, tc.y)
			if err := Run("nuslerp", p, ts); err != nil {
				t.Fatal(err)
			}
			w1, w2 := 1.0, 1.0
			if tc.w != nil {
				w1, w2 = float64(tc.w[0]), float64(tc.w[1])
			}
			want := nuslerpRef(tc.base, tc.x, tc.y, w1, w2)
			for j, got := range ts[0].Out.F32 {
				scale := max(float32(math.Abs(float64(tc.base[j]))),
					float32(math.Abs(float64(tc.x[j]-tc.base[j]))), float32(math.Abs(float64(tc.y[j]-tc.base[j]))))
				if !halfUlp(got, want[j], scale) {
					t.Fatalf("entry %d: got %v, want %v", j, got, want[j])
				}
			}
		})
	}
}

func TestNuslerpInput(t *testing.T) {
	if _, bad := Resolve("nuslerp", 3, Values{}); len(bad) == 0 || !strings.Contains(Format(bad, NameWhere)[0], "nuslerp merges exactly 2 models, got 3") {
		t.Fatalf("three models: %v", bad)
	}
	p, bad := Resolve("nuslerp", 2, Values{Global: map[string]any{"nuslerp_row_wise": true}})
	if len(bad) > 0 || p.NuslerpRows {
		t.Fatalf("row_wise with flatten: %+v, %v", p, bad)
	}
	p, bad = Resolve("nuslerp", 2, Values{Global: map[string]any{"nuslerp_flatten": false}})
	if len(bad) > 0 || !p.NuslerpRows {
		t.Fatalf("flatten false resolves: %+v, %v", p, bad)
	}
	err := Run("nuslerp", p, one("w", []float32{0, 0}, []float32{1, 0}, []float32{0, 1}))
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "nuslerp_flatten: false (per-row or per-column interpolation) is not supported") {
		t.Fatalf("got %v", err)
	}
}
