package search

import (
	"math"
	"testing"
)

func TestCosineAt(t *testing.T) {
	s := Cosine{FMin: 0.1, FMax: 0.9, CRMin: 0.2, CRMax: 0.6, T: 10}
	const tol = 1e-15
	for _, c := range []struct {
		g      int
		f, cr  float64
		reason string
	}{
		{0, 0.9, 0.6, "start at the maximum"},
		{5, 0.5, 0.4, "T/2: midpoint"},
		{10, 0.1, 0.2, "T: minimum"},
		{15, 0.5, 0.4, "3T/2: rising again"},
		{20, 0.9, 0.6, "2T: back at the maximum, no jump"},
		{40, 0.9, 0.6, "4T"},
		{-5, 0.5, 0.4, "even in g"},
		// g = T/4: ½(1+cos(π/4)) = 0.853553390593…
		{2, 0.1 + 0.8*0.5*(1+math.Cos(math.Pi/5)), 0.2 + 0.4*0.5*(1+math.Cos(math.Pi/5)), "g=2"},
	} {
		f, cr := s.At(c.g)
		if math.Abs(f-c.f) > tol || math.Abs(cr-c.cr) > tol {
			t.Errorf("At(%d) (%s) = %v, %v; want %v, %v", c.g, c.reason, f, cr, c.f, c.cr)
		}
	}
	// Params without jitter equals At and draws nothing.
	r := NewRNG(1)
	before := r.State()
	if f, cr := s.Params(7, r); r.State() != before {
		t.Error("Params without jitter drew from the RNG")
	} else if f2, cr2 := s.At(7); f != f2 || cr != cr2 {
		t.Errorf("Params %v %v != At %v %v", f, cr, f2, cr2)
	}
}

func TestCosineJitter(t *testing.T) {
	s := Cosine{FMin: 0.1, FMax: 0.9, CRMin: 0.2, CRMax: 0.6, T: 10, Jitter: true}
	r, twin := NewRNG(5), NewRNG(5)
	for g := range 30 {
		f, cr := s.Params(g, r)
		f0, cr0 := s.At(g)
		uf, ucr := twin.Float64(), twin.Float64()
		if wf, wcr := f0+0.1+0.8*uf, cr0+0.2+0.4*ucr; math.Abs(f-wf) > 1e-15 || math.Abs(cr-wcr) > 1e-15 {
			t.Fatalf("g=%d: got %v, %v; want %v, %v", g, f, cr, wf, wcr)
		}
		if f < f0+0.1 || f >= f0+0.9 {
			t.Fatalf("g=%d: jittered F %v outside [%v, %v)", g, f, f0+0.1, f0+0.9)
		}
	}
}

func TestScheduleDefaultsAndSpecs(t *testing.T) {
	d := DefaultCosine(50)
	if f, cr := d.At(0); f != 0.9 || cr != 0.9 {
		t.Errorf("DefaultCosine start %v %v", f, cr)
	}
	if f, cr := d.At(50); math.Abs(f-0.1) > 1e-15 || math.Abs(cr-0.1) > 1e-15 {
		t.Errorf("DefaultCosine end %v %v", f, cr)
	}
	w := CADEWeightSpaceCosine()
	if w.T != 40 || w.FMin != 1e-6 || w.FMax != 1e-5 || w.CRMin != 1e-6 || w.CRMax != 1e-5 {
		t.Errorf("CADE weight-space defaults %+v", w)
	}
	for _, s := range []Schedule{Constant{F: 0.5, CR: 0.9}, &Constant{F: 0.3, CR: 0}, d, &w,
		Cosine{FMin: 0.1, FMax: 0.2, CRMin: 0, CRMax: 1, T: 3, Jitter: true}} {
		back, err := SpecOf(s).Schedule()
		if err != nil {
			t.Fatalf("%+v: %v", s, err)
		}
		for g := range 10 {
			r1, r2 := NewRNG(1), NewRNG(1)
			f1, c1 := s.Params(g, r1)
			f2, c2 := back.Params(g, r2)
			if f1 != f2 || c1 != c2 {
				t.Fatalf("%+v: rebuilt schedule differs at g=%d", s, g)
			}
		}
	}
	for _, bad := range []ScheduleSpec{{Kind: "custom"}, {Kind: "nope"}, {Kind: "constant", F: 0.5, CR: 1.5},
		{Kind: "cosine", FMin: 0.5, FMax: 0.1, CRMax: 0.5, T: 3}, {Kind: "cosine", FMax: 1, CRMax: 0.5, T: 0},
		{Kind: "cosine", FMax: 1, CRMax: 1.5, T: 2}, {Kind: "constant", F: math.NaN(), CR: 0.5}} {
		if _, err := bad.Schedule(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}
