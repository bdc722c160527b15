package merge

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestNeuroDefaultLam2 pins NeuroMerging's no-validation defaults (issue
// 12): MaskRate ½ and the automatic λ₂ = 1/(1 − max_t σ_t) (Lam2 = 0); a
// positive Lam2 fixes λ₂.
func TestNeuroDefaultLam2(t *testing.T) {
	if p := DefaultParams("neuro"); p.Lam2 != 0 || p.MaskRate != 0.5 {
		t.Fatalf("DefaultParams(neuro) has Lam2 %v, MaskRate %v; want 0 (automatic), 0.5", p.Lam2, p.MaskRate)
	}
	// One tensor, two models, mask_rate ½: σ = (0.3, 0.1) (TestNeuroReport);
	// elementwise TIES of τ̂₁ = [0 0 3 4], τ̂₂ = [8 1 0 0] is [8 1 3 4].
	ties := []float32{8, 1, 3, 4}
	for _, tc := range []struct {
		name     string
		lam2     float64
		wantLam2 float64
		wantAuto bool
	}{
		{"default (automatic)", 0, 1 / 0.7, true},
		{"fixed at one", 1, 1, false},
		{"explicit", 2.5, 2.5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := shaped("w", []int{4}, make([]float32, 4), []float32{1, -2, 3, 4}, []float32{8, 1, 0, -1})
			p := DefaultParams("neuro")
			p.MaskRate = 0.5
			p.Lam2 = tc.lam2
			rep, err := RunReport("neuro", p, ts)
			if err != nil {
				t.Fatal(err)
			}
			if got := rep["lam2"].(float64); math.Abs(got-tc.wantLam2) > 1e-12 || rep["lam2_auto"] != tc.wantAuto {
				t.Fatalf("report %v, want lam2 %v (auto %v)", rep, tc.wantLam2, tc.wantAuto)
			}
			want := make([]float32, len(ties))
			for i, x := range ties {
				want[i] = float32(tc.wantLam2 * float64(x))
			}
			if !near(ts[0].Out.F32, want, 1e-5) {
				t.Fatalf("got %v, want %v", ts[0].Out.F32, want)
			}
		})
	}
}

// TestNeuroAutoLam2Gaussian shows the scale of the automatic λ₂ at the
// authors' heavier trim (MaskRate 0.9), the default before issue 12: the top 10 % of N(0, 1) entries (|x| > z = 1.6449)
// hold φ(z)/φ(0) = 0.2585 of the L1 mass, so 1/(1 − σ) = exp(z²/2) = 3.87.
func TestNeuroAutoLam2Gaussian(t *testing.T) {
	const n = 200 * 300
	r := rand.New(rand.NewPCG(1, 2))
	models := make([][]float32, 3)
	for m := range models {
		models[m] = make([]float32, n)
		for i := range models[m] {
			models[m][i] = float32(r.NormFloat64())
		}
	}
	ts := shaped("w", []int{200, 300}, make([]float32, n), models...)
	p := DefaultParams("neuro")
	p.MaskRate, p.Lam2 = 0.9, 0
	rep, err := RunReport("neuro", p, ts)
	if err != nil {
		t.Fatal(err)
	}
	z := 1.6448536269514722
	want := math.Exp(z * z / 2)
	if got := rep["lam2"].(float64); math.Abs(got/want-1) > 0.02 {
		t.Fatalf("automatic λ₂ = %v, want %v ± 2 %%", got, want)
	}
}
