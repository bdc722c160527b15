package search

import (
	"math"
	"slices"
	"testing"
)

// Dyadic values and F = 0.5 make every expected vector below exact.
var opPop = [][]float64{
	{1, 2, 3},       // 0
	{0.5, -1, 4},    // 1
	{2, 2, 2},       // 2
	{-3, 0.25, 1},   // 3
	{0, 0, 0},       // 4
	{1.5, 1.5, 1.5}, // 5
}

func TestMutate(t *testing.T) {
	for _, c := range []struct {
		name     string
		s        Strategy
		i, best  int
		r        []int
		f        float64
		expected []float64
	}{
		// x1 + 0.5(x2 − x3) = (0.5,−1,4) + 0.5·(5, 1.75, 1)
		{"rand/1", Rand1Bin, 0, 4, []int{1, 2, 3}, 0.5, []float64{3, -0.125, 4.5}},
		// x_best(=x5) + 0.5(x0 − x3) = (1.5,1.5,1.5) + 0.5·(4, 1.75, 2)
		{"best/1", Best1Bin, 2, 5, []int{0, 3}, 0.5, []float64{3.5, 2.375, 2.5}},
		// x2 + 0.5(x5 − x2) + 0.5(x1 − x4) = (2,2,2) + (−0.25,−0.25,−0.25) + (0.25,−0.5,2)
		{"current-to-best/1", CurrentToBest1Bin, 2, 5, []int{1, 4}, 0.5, []float64{2, 1.25, 3.75}},
		// F = 0 returns the base vector.
		{"rand/1 F=0", Rand1Bin, 0, 4, []int{3, 1, 2}, 0, []float64{-3, 0.25, 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dst := make([]float64, 3)
			mutate(dst, c.s, opPop, c.i, c.best, c.r, c.f)
			if !slices.Equal(dst, c.expected) {
				t.Fatalf("got %v, want %v", dst, c.expected)
			}
		})
	}
}

func TestDiffMutateFloat32Aliasing(t *testing.T) {
	base := []float32{1, 2}
	a := []float32{3, 5}
	b := []float32{1, 1}
	DiffMutate(base, base, a, b, 0.25) // dst aliases base
	if want := []float32{1.5, 3}; !slices.Equal(base, want) {
		t.Fatalf("got %v, want %v", base, want)
	}
	cur := []float32{1, 1}
	CurrentToBestMutate(cur, cur, []float32{3, -1}, []float32{2, 2}, []float32{0, 4}, 0.5)
	if want := []float32{3, -1}; !slices.Equal(cur, want) { // 1+1+1, 1−1−1
		t.Fatalf("got %v, want %v", cur, want)
	}
}

func TestBinomialMask(t *testing.T) {
	// From state {1,2,3,4} the Float64 draws are 5.6e-16, 0, 8.2e-11,
	// 0.06592, 0.06593, 0.03296, 0.8767, … and IntN(6) of the first output
	// (11520) is 0.
	r := refRNG(t)
	mask := make([]bool, 6)
	jr := BinomialMask(mask, 0.05, true, r)
	if jr != 0 || !slices.Equal(mask, []bool{true, true, false, false, true, false}) {
		t.Fatalf("forced: j_rand %d mask %v", jr, mask)
	}
	r = refRNG(t)
	jr = BinomialMask(mask, 0.05, false, r)
	if jr != -1 || !slices.Equal(mask, []bool{true, true, true, false, false, true}) {
		t.Fatalf("unforced: j_rand %d mask %v", jr, mask)
	}
	// CR = 0 with the forced index takes exactly one coordinate; without it none.
	r = NewRNG(3)
	for range 100 {
		BinomialMask(mask, 0, true, r)
		if c := count(mask); c != 1 {
			t.Fatalf("CR=0 forced: %d donor coordinates", c)
		}
		BinomialMask(mask, 0, false, r)
		if c := count(mask); c != 0 {
			t.Fatalf("CR=0 unforced: %d donor coordinates", c)
		}
		BinomialMask(mask, 1, false, r)
		if c := count(mask); c != 6 {
			t.Fatalf("CR=1: %d donor coordinates", c)
		}
	}
}

func count(m []bool) int {
	c := 0
	for _, v := range m {
		if v {
			c++
		}
	}
	return c
}

func TestCrossover(t *testing.T) {
	target := []float64{1, 2, 3, 4}
	donor := []float64{-1, -2, -3, -4}
	dst := make([]float64, 4)
	Crossover(dst, target, donor, []bool{true, false, false, true})
	if want := []float64{-1, 2, 3, -4}; !slices.Equal(dst, want) {
		t.Fatalf("got %v, want %v", dst, want)
	}
	Crossover(donor, target, donor, []bool{false, true, false, true}) // dst aliases donor
	if want := []float64{1, -2, 3, -4}; !slices.Equal(donor, want) {
		t.Fatalf("aliased: got %v, want %v", donor, want)
	}
}

func TestPickDistinct(t *testing.T) {
	// All draws from state {1,2,3,4} are 0 for small n: excluding 2 from
	// {0..4} the first unused indices are 0, 1, 3.
	r := refRNG(t)
	got := make([]int, 3)
	PickDistinct(r, 5, 2, got)
	if !slices.Equal(got, []int{0, 1, 3}) {
		t.Fatalf("got %v, want [0 1 3]", got)
	}
	// Draws 7–9 are IntN(5)=4, IntN(4)=1, IntN(3)=1: excluding 1 from {0..5}:
	// 4 → 5; then 1 → 2 (skipping 1); then 1 → 3 (skipping 1, 2).
	r = refRNG(t)
	for range 6 {
		r.Uint64()
	}
	PickDistinct(r, 6, 1, got)
	if !slices.Equal(got, []int{5, 2, 3}) {
		t.Fatalf("got %v, want [5 2 3]", got)
	}
	// Property: distinct, in range, never the excluded index, roughly uniform.
	r = NewRNG(9)
	freq := make([]int, 8)
	const m = 40000
	for range m {
		PickDistinct(r, 8, 3, got)
		for a := range got {
			if got[a] < 0 || got[a] >= 8 || got[a] == 3 {
				t.Fatalf("bad index in %v", got)
			}
			for b := 0; b < a; b++ {
				if got[a] == got[b] {
					t.Fatalf("repeated index in %v", got)
				}
			}
			freq[got[a]]++
		}
	}
	exp := float64(3*m) / 7
	for k, c := range freq {
		if k == 3 {
			continue
		}
		if math.Abs(float64(c)-exp) > 5*math.Sqrt(exp) {
			t.Fatalf("index %d drawn %d times, expected %v", k, c, exp)
		}
	}
}

func TestRepair(t *testing.T) {
	lo := []float64{0, 0, 0, 0, 0, 0, 0, 1}
	hi := []float64{2, 2, 2, 2, 2, 2, 2, 1}
	in := []float64{-0.5, 2.5, -3, 5.5, 7, 1.25, math.NaN(), 4}
	clip := slices.Clone(in)
	RepairClip(clip, lo, hi)
	if want := []float64{0, 2, 0, 2, 2, 1.25, 0, 1}; !slices.Equal(clip, want) {
		t.Fatalf("clip: got %v, want %v", clip, want)
	}
	ref := slices.Clone(in)
	RepairReflect(ref, lo, hi)
	// −0.5 → 0.5; 2.5 → 1.5; −3 → 3 → 1; 5.5 → −1.5 → 1.5; 7 → −3 → 3 → 1;
	// NaN → lo; zero-width box → lo.
	if want := []float64{0.5, 1.5, 1, 1.5, 1, 1.25, 0, 1}; !slices.Equal(ref, want) {
		t.Fatalf("reflect: got %v, want %v", ref, want)
	}
	f32 := []float32{-1, 3.5}
	RepairReflect(f32, []float32{-0.5, 1}, []float32{0.5, 3})
	if want := []float32{0, 2.5}; !slices.Equal(f32, want) {
		t.Fatalf("reflect float32: got %v, want %v", f32, want)
	}
}
