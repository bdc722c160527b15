package search

import (
	"errors"
	"fmt"
	"math"
)

// Schedule supplies the DE control parameters for each generation.
//
// Params returns the mutation factor F and crossover rate CR for trial
// generation g (0 for the first batch of trials). rng is the optimiser's own
// seeded stream; deterministic schedules must not draw from it, stochastic
// ones (Cosine with Jitter) may. DE clamps CR to [0, 1] and rejects a
// non-finite F (Tell then returns an error).
type Schedule interface {
	Params(g int, rng *RNG) (F, CR float64)
}

// Constant is the classic fixed-parameter schedule (Storn & Price 1997).
type Constant struct {
	F  float64 // mutation factor, finite (typically in (0, 1])
	CR float64 // crossover rate in [0, 1]
}

// Params returns s.F and s.CR for every generation; it draws nothing.
func (s Constant) Params(int, *RNG) (F, CR float64) { return s.F, s.CR }

// Validate checks that F is finite and CR in [0, 1].
func (s Constant) Validate() error {
	if !finite(s.F) || !(s.CR >= 0 && s.CR <= 1) {
		return fmt.Errorf("search: Constant schedule: need finite F and CR in [0,1], got F=%v CR=%v", s.F, s.CR)
	}
	return nil
}

// Cosine is the periodic cosine schedule of CADE (Jiang, Du et al., 2024):
//
//	F(g)  = FMin  + ½(FMax  − FMin)(1 + cos(π·g/T))
//	CR(g) = CRMin + ½(CRMax − CRMin)(1 + cos(π·g/T))
//
// so F(0) = FMax, F(T) = FMin, and the schedule keeps cycling with period 2T
// (F(2T) = FMax again, no restart jump). With Jitter, Params adds to each value
// an independent uniform draw from [FMin, FMax) (resp. [CRMin, CRMax)) — the
// "+ optional uniform jitter between F_min and F_0" of CADE as written in the
// project's METHODS — once per generation, drawing F's variate then CR's, and
// CR is then clamped to [0, 1] by DE.
type Cosine struct {
	FMin, FMax   float64 // F range; FMin <= FMax, finite
	CRMin, CRMax float64 // CR range within [0, 1]; CRMin <= CRMax
	T            int     // half period in generations, >= 1
	Jitter       bool    // add uniform jitter (draws two Float64 per generation)
}

// DefaultCosine is the schedule for low-dimensional searches (merge
// coefficients, NPS band weights): F 0.9 → 0.1 and CR 0.9 → 0.1 over
// T = generations (one half-cycle per run), no jitter.
func DefaultCosine(generations int) Cosine {
	return Cosine{FMin: 0.1, FMax: 0.9, CRMin: 0.1, CRMax: 0.9, T: generations}
}

// CADEWeightSpaceCosine is the setting of CADE's authors' code for DE over
// whole weight sets: T = 40, F_min = CR_min = 1e-6, F_0 = CR_0 = 1e-5.
func CADEWeightSpaceCosine() Cosine {
	return Cosine{FMin: 1e-6, FMax: 1e-5, CRMin: 1e-6, CRMax: 1e-5, T: 40}
}

// At returns the deterministic cosine values F(g), CR(g) (no jitter). g is
// reduced modulo 2T first (negative g is mirrored, the schedule being even),
// so large g do not lose precision. O(1).
func (s Cosine) At(g int) (F, CR float64) {
	if s.T <= 0 {
		return s.FMax, s.CRMax
	}
	p := 2 * s.T
	gg := g % p
	if gg < 0 {
		gg += p
	}
	c := 0.5 * (1 + math.Cos(math.Pi*float64(gg)/float64(s.T)))
	return s.FMin + (s.FMax-s.FMin)*c, s.CRMin + (s.CRMax-s.CRMin)*c
}

// Params returns At(g), plus the uniform jitter when s.Jitter is set (two
// rng.Float64 draws, F's first).
func (s Cosine) Params(g int, rng *RNG) (F, CR float64) {
	F, CR = s.At(g)
	if s.Jitter {
		F += s.FMin + (s.FMax-s.FMin)*rng.Float64()
		CR += s.CRMin + (s.CRMax-s.CRMin)*rng.Float64()
	}
	return F, CR
}

// Validate checks finite ranges with Min <= Max, CR within [0, 1] and T >= 1.
func (s Cosine) Validate() error {
	if !finite(s.FMin) || !finite(s.FMax) || s.FMin > s.FMax {
		return fmt.Errorf("search: Cosine schedule: need finite FMin <= FMax, got %v, %v", s.FMin, s.FMax)
	}
	if !(s.CRMin >= 0 && s.CRMin <= s.CRMax && s.CRMax <= 1) {
		return fmt.Errorf("search: Cosine schedule: need 0 <= CRMin <= CRMax <= 1, got %v, %v", s.CRMin, s.CRMax)
	}
	if s.T < 1 {
		return fmt.Errorf("search: Cosine schedule: need T >= 1, got %d", s.T)
	}
	return nil
}

// ScheduleSpec is the serialisable description of a Schedule inside DEState.
// Kind is "constant" (F, CR used), "cosine" (FMin…Jitter used) or "custom"
// (a caller-defined Schedule, which RestoreDE must be given explicitly).
type ScheduleSpec struct {
	Kind   string  `json:"kind"`
	F      float64 `json:"f,omitempty"`
	CR     float64 `json:"cr,omitempty"`
	FMin   float64 `json:"f_min,omitempty"`
	FMax   float64 `json:"f_max,omitempty"`
	CRMin  float64 `json:"cr_min,omitempty"`
	CRMax  float64 `json:"cr_max,omitempty"`
	T      int     `json:"t,omitempty"`
	Jitter bool    `json:"jitter,omitempty"`
}

// SpecOf describes s; Constant and Cosine (values or pointers) are described
// fully, anything else has Kind "custom".
func SpecOf(s Schedule) ScheduleSpec {
	switch v := s.(type) {
	case Constant:
		return ScheduleSpec{Kind: "constant", F: v.F, CR: v.CR}
	case *Constant:
		return SpecOf(*v)
	case Cosine:
		return ScheduleSpec{Kind: "cosine", FMin: v.FMin, FMax: v.FMax, CRMin: v.CRMin, CRMax: v.CRMax, T: v.T, Jitter: v.Jitter}
	case *Cosine:
		return SpecOf(*v)
	}
	return ScheduleSpec{Kind: "custom"}
}

// Schedule rebuilds and validates the described schedule. Kind "custom"
// cannot be rebuilt and is an error.
func (sp ScheduleSpec) Schedule() (Schedule, error) {
	switch sp.Kind {
	case "constant":
		c := Constant{F: sp.F, CR: sp.CR}
		if err := c.Validate(); err != nil {
			return nil, err
		}
		return c, nil
	case "cosine":
		c := Cosine{FMin: sp.FMin, FMax: sp.FMax, CRMin: sp.CRMin, CRMax: sp.CRMax, T: sp.T, Jitter: sp.Jitter}
		if err := c.Validate(); err != nil {
			return nil, err
		}
		return c, nil
	case "custom":
		return nil, errors.New("search: a custom schedule cannot be rebuilt from its spec; pass it to RestoreDE")
	}
	return nil, fmt.Errorf("search: unknown schedule kind %q", sp.Kind)
}
