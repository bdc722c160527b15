package search

import (
	"fmt"
	"math"
	"slices"
)

// Strategy names a DE mutation strategy (all with binomial crossover).
type Strategy string

// The supported strategies (Storn & Price 1997; r1, r2, r3 are distinct
// indices different from the target i, drawn by PickDistinct):
const (
	// Rand1Bin: v = x_r1 + F·(x_r2 − x_r3). Needs a population of >= 4.
	Rand1Bin Strategy = "rand/1/bin"
	// Best1Bin: v = x_best + F·(x_r1 − x_r2). Needs >= 3.
	Best1Bin Strategy = "best/1/bin"
	// CurrentToBest1Bin: v = x_i + F·(x_best − x_i) + F·(x_r1 − x_r2). Needs >= 3.
	CurrentToBest1Bin Strategy = "current-to-best/1/bin"
)

// randCount is the number of random indices the strategy draws.
func (s Strategy) randCount() (int, error) {
	switch s {
	case Rand1Bin:
		return 3, nil
	case Best1Bin, CurrentToBest1Bin:
		return 2, nil
	}
	return 0, fmt.Errorf("unknown DE strategy %q", string(s))
}

// Repair names the box-repair rule applied to DE trial vectors.
type Repair string

const (
	// RepairModeClip projects a trial onto the box (RepairClip): optima on the
	// boundary are reached exactly. The default.
	RepairModeClip Repair = "clip"
	// RepairModeReflect mirrors a trial at the violated bound (RepairReflect),
	// which keeps more diversity inside the box.
	RepairModeReflect Repair = "reflect"
)

// DEOptions configures NewDE. The dimension n is taken from Lo/Hi, X0 or
// Population (which must agree).
type DEOptions struct {
	// Lo, Hi are box bounds: both nil (unbounded, allowed only with an explicit
	// Population) or both of length n, finite, Lo[i] <= Hi[i].
	Lo, Hi []float64
	// X0, when given, becomes individual 0 of a uniformly drawn population.
	X0 []float64
	// Population is an explicit initial population (copied; n-vectors inside
	// the box). Excludes X0 and Popsize.
	Population [][]float64
	// Fitness optionally gives the fitness of Population, which then needs no
	// evaluation: the first Ask already returns trials.
	Fitness []float64
	// Popsize NP; zero means max(10n, minimum) for a drawn population, where
	// the minimum is 4 for rand/1/bin and 3 otherwise.
	Popsize int
	// Strategy defaults to Rand1Bin.
	Strategy Strategy
	// Schedule supplies F and CR; nil means Constant{F: 0.5, CR: 0.9}.
	// Constant and Cosine are validated here.
	Schedule Schedule
	// NoForcedIndex disables the forced crossover index j_rand (as CADE's
	// authors do); by default one coordinate always comes from the donor.
	NoForcedIndex bool
	// Strict replaces a parent only by a strictly better trial; by default a
	// trial at least as good replaces it.
	Strict bool
	// Repair is the bound repair for trials (default RepairModeClip).
	Repair Repair
	// Minimize makes lower fitness better. The default (false) maximises.
	Minimize bool
	// Seed seeds the RNG.
	Seed uint64
}

// DE is differential evolution (Storn & Price, "Differential Evolution – A
// Simple and Efficient Heuristic for Global Optimization over Continuous
// Spaces", J. Global Optim. 11, 1997) with one-to-one greedy selection, as an
// ask/tell optimiser. With Strategy Rand1Bin, a Cosine schedule, Strict and
// NoForcedIndex it is the DE of CADE (Jiang, Du et al., 2024).
//
// Generation protocol: unless the initial fitness was supplied, the first Ask
// returns the initial population itself and its Tell stores the fitness
// (no selection; Generation stays 0). Every later Ask returns NP trial vectors,
// one per target i, and Tell performs the selection
// x_i ← u_i if fitness(u_i) is at least as good (strictly better with Strict);
// a failed (non-finite) trial therefore never replaces a successful parent.
// Generation() then increases by one.
//
// RNG draw order of a trial generation g: first the schedule's draws
// (Params(g, rng); none for Constant or Cosine without jitter), then for
// i = 0…NP−1: PickDistinct of the strategy's random indices (excluding i),
// then BinomialMask (j_rand first when forced, then one Float64 per
// coordinate). x_best is the current population's best (lowest index on ties,
// fixed for the whole generation). Trials are repaired into the box after
// crossover. A drawn initial population uses one Float64 per coordinate,
// individual by individual (X0, when given, is individual 0 and draws
// nothing).
//
// Cost: Ask O(NP·n), Tell O(NP·n); memory O(NP·n). Not safe for concurrent use.
type DE struct {
	n        int
	np       int
	strategy Strategy
	sched    Schedule
	forced   bool
	strict   bool
	repair   Repair
	minimize bool
	lo, hi   []float64

	pop     [][]float64
	fit     []float64 // told fitness of pop; nil until the initial population is evaluated
	pending [][]float64
	gen     int
	evals   int
	lastF   float64
	lastCR  float64
	err     error // schedule error found by Ask, reported by Tell
	rng     *RNG
}

// NewDE validates opt and builds the initial population (drawing it
// uniformly in the box when opt.Population is nil).
func NewDE(opt DEOptions) (*DE, error) {
	fail := func(format string, a ...any) (*DE, error) {
		return nil, fmt.Errorf("search: NewDE: "+format, a...)
	}
	strategy := opt.Strategy
	if strategy == "" {
		strategy = Rand1Bin
	}
	k, err := strategy.randCount()
	if err != nil {
		return fail("%w", err)
	}
	repair := opt.Repair
	if repair == "" {
		repair = RepairModeClip
	}
	if repair != RepairModeClip && repair != RepairModeReflect {
		return fail("unknown repair %q", string(repair))
	}
	sched := opt.Schedule
	if sched == nil {
		sched = Constant{F: 0.5, CR: 0.9}
	}
	if v, ok := sched.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return fail("%w", err)
		}
	}
	n := 0
	switch {
	case opt.Lo != nil || opt.Hi != nil:
		n = len(opt.Lo)
	case opt.X0 != nil:
		n = len(opt.X0)
	case len(opt.Population) > 0:
		n = len(opt.Population[0])
	}
	if n == 0 {
		return fail("dimension is zero (give Lo/Hi, X0 or Population)")
	}
	if err := checkBounds(opt.Lo, opt.Hi, n); err != nil {
		return fail("%w", err)
	}
	d := &DE{
		n: n, strategy: strategy, sched: sched, forced: !opt.NoForcedIndex, strict: opt.Strict,
		repair: repair, minimize: opt.Minimize, lo: slices.Clone(opt.Lo), hi: slices.Clone(opt.Hi),
		rng: NewRNG(opt.Seed),
	}
	if opt.Population != nil {
		if opt.X0 != nil || opt.Popsize != 0 {
			return fail("Population excludes X0 and Popsize")
		}
		if len(opt.Population) < k+1 {
			return fail("%s needs a population of at least %d, got %d", strategy, k+1, len(opt.Population))
		}
		for i, x := range opt.Population {
			if len(x) != n {
				return fail("Population[%d] has length %d, want %d", i, len(x), n)
			}
			if err := checkInside(x, d.lo, d.hi, fmt.Sprintf("Population[%d]", i)); err != nil {
				return fail("%w", err)
			}
		}
		d.pop = clone2(opt.Population)
		d.np = len(d.pop)
		if opt.Fitness != nil {
			if len(opt.Fitness) != d.np {
				return fail("Fitness has %d values for %d individuals", len(opt.Fitness), d.np)
			}
			d.fit = slices.Clone(opt.Fitness)
		}
		return d, nil
	}
	if opt.Fitness != nil {
		return fail("Fitness needs an explicit Population")
	}
	if d.lo == nil {
		return fail("a drawn population needs bounds Lo, Hi")
	}
	if opt.X0 != nil {
		if len(opt.X0) != n {
			return fail("X0 has length %d, want %d", len(opt.X0), n)
		}
		if err := checkInside(opt.X0, d.lo, d.hi, "X0"); err != nil {
			return fail("%w", err)
		}
	}
	d.np = opt.Popsize
	if d.np == 0 {
		d.np = max(10*n, k+1)
	}
	if d.np < k+1 {
		return fail("%s needs Popsize >= %d, got %d", strategy, k+1, d.np)
	}
	d.pop = make([][]float64, d.np)
	for i := range d.pop {
		if i == 0 && opt.X0 != nil {
			d.pop[0] = slices.Clone(opt.X0)
			continue
		}
		x := make([]float64, n)
		for j := range x {
			x[j] = d.lo[j] + (d.hi[j]-d.lo[j])*d.rng.Float64()
		}
		RepairClip(x, d.lo, d.hi) // against rounding at hi
		d.pop[i] = x
	}
	return d, nil
}

// Dim returns n.
func (d *DE) Dim() int { return d.n }

// Popsize returns NP.
func (d *DE) Popsize() int { return d.np }

// Generation returns the number of completed trial generations (selections).
func (d *DE) Generation() int { return d.gen }

// Evals returns the number of fitness values told so far.
func (d *DE) Evals() int { return d.evals }

// LastParams returns the F and CR used for the latest trial batch (CR after
// clamping to [0, 1]); zeros before the first one.
func (d *DE) LastParams() (F, CR float64) { return d.lastF, d.lastCR }

// Population returns a copy of the current population (NP × n) and its told
// fitness (nil before the initial population has been evaluated).
func (d *DE) Population() ([][]float64, []float64) {
	return clone2(d.pop), slices.Clone(d.fit)
}

// Best returns a copy of the best individual of the current population and
// its told fitness (lowest index on ties). Selection is elitist per slot, so
// this never gets worse. Before any successful evaluation it returns nil and
// −Inf (+Inf when minimising).
func (d *DE) Best() (x []float64, f float64) {
	b := d.bestIndex()
	if b < 0 || score(d.fit[b], d.minimize) == math.Inf(-1) {
		return nil, worst(d.minimize)
	}
	return slices.Clone(d.pop[b]), d.fit[b]
}

// bestIndex returns the index of the best individual, −1 before evaluation.
func (d *DE) bestIndex() int {
	if d.fit == nil {
		return -1
	}
	b := 0
	bs := score(d.fit[0], d.minimize)
	for i := 1; i < d.np; i++ {
		if s := score(d.fit[i], d.minimize); s > bs {
			b, bs = i, s
		}
	}
	return b
}

// Ask returns NP points to evaluate (fresh copies): the initial population
// if it has not been evaluated yet, else one trial vector per individual (see
// DE for the construction and the RNG draw order). Calling Ask again before
// Tell returns the same points and draws nothing. O(NP·n).
func (d *DE) Ask() [][]float64 {
	if d.fit == nil {
		return clone2(d.pop)
	}
	if d.pending == nil {
		d.pending = d.trials()
	}
	return clone2(d.pending)
}

// trials builds one batch of trial vectors.
func (d *DE) trials() [][]float64 {
	F, CR := d.sched.Params(d.gen, d.rng)
	if !finite(F) {
		d.err = fmt.Errorf("schedule returned non-finite F=%v at generation %d", F, d.gen)
		F = 0
	}
	if math.IsNaN(CR) {
		CR = 0
	}
	CR = math.Min(1, math.Max(0, CR))
	d.lastF, d.lastCR = F, CR
	k, _ := d.strategy.randCount()
	r := make([]int, k)
	mask := make([]bool, d.n)
	best := d.bestIndex()
	out := make([][]float64, d.np)
	for i := range out {
		PickDistinct(d.rng, d.np, i, r)
		v := make([]float64, d.n)
		mutate(v, d.strategy, d.pop, i, best, r, F)
		BinomialMask(mask, CR, d.forced, d.rng)
		Crossover(v, d.pop[i], v, mask)
		if d.lo != nil {
			if d.repair == RepairModeReflect {
				RepairReflect(v, d.lo, d.hi)
			} else {
				RepairClip(v, d.lo, d.hi)
			}
		}
		out[i] = v
	}
	return out
}

// mutate writes the donor of target i into dst for strategy s, with best the
// index of the population's best and r the random indices (3 for Rand1Bin,
// 2 otherwise). Pure: it draws nothing.
func mutate(dst []float64, s Strategy, pop [][]float64, i, best int, r []int, f float64) {
	switch s {
	case Rand1Bin:
		DiffMutate(dst, pop[r[0]], pop[r[1]], pop[r[2]], f)
	case Best1Bin:
		DiffMutate(dst, pop[best], pop[r[0]], pop[r[1]], f)
	case CurrentToBest1Bin:
		CurrentToBestMutate(dst, pop[i], pop[best], pop[r[0]], pop[r[1]], f)
	default:
		panic(fmt.Sprintf("search: unknown DE strategy %q", string(s)))
	}
}

// accept reports whether a trial with told fitness ft replaces a parent with
// told fitness fp (failed evaluations rank worst).
func accept(ft, fp float64, minimize, strict bool) bool {
	st, sp := score(ft, minimize), score(fp, minimize)
	if strict {
		return st > sp
	}
	return st >= sp
}

// Tell takes the fitness of the points returned by the pending Ask (same
// order). For the initial population it stores them; for trials it performs
// one-to-one selection and advances the generation. Errors (nothing to tell,
// wrong length, a schedule that returned a non-finite F) leave the optimiser
// unchanged. O(NP·n).
func (d *DE) Tell(fitness []float64) error {
	if d.fit == nil {
		if len(fitness) != d.np {
			return fmt.Errorf("search: DE.Tell: got %d fitness values, want %d", len(fitness), d.np)
		}
		d.fit = slices.Clone(fitness)
		d.evals += d.np
		return nil
	}
	if d.pending == nil {
		return fmt.Errorf("search: DE.Tell: %w", ErrNoPending)
	}
	if d.err != nil {
		return fmt.Errorf("search: DE.Tell: %w", d.err)
	}
	if len(fitness) != d.np {
		return fmt.Errorf("search: DE.Tell: got %d fitness values, want %d", len(fitness), d.np)
	}
	for i, u := range d.pending {
		if accept(fitness[i], d.fit[i], d.minimize, d.strict) {
			d.pop[i] = u
			d.fit[i] = fitness[i]
		}
	}
	d.pending = nil
	d.gen++
	d.evals += d.np
	return nil
}

// DEState is the complete, JSON-friendly state of a DE; RestoreDE rebuilds
// an optimiser that continues bit for bit. Fitness is nil until the initial
// population has been evaluated; Pending holds the trials of an outstanding
// Ask together with LastF/LastCR.
type DEState struct {
	Version       int          `json:"version"`
	N             int          `json:"n"`
	Strategy      Strategy     `json:"strategy"`
	Schedule      ScheduleSpec `json:"schedule"`
	NoForcedIndex bool         `json:"no_forced_index"`
	Strict        bool         `json:"strict"`
	Repair        Repair       `json:"repair"`
	Minimize      bool         `json:"minimize"`
	Lo            []float64    `json:"lo,omitempty"`
	Hi            []float64    `json:"hi,omitempty"`
	Population    [][]float64  `json:"population"`
	Fitness       []JSONFloat  `json:"fitness,omitempty"`
	Pending       [][]float64  `json:"pending,omitempty"`
	Generation    int          `json:"generation"`
	Evals         int          `json:"evals"`
	LastF         float64      `json:"last_f"`
	LastCR        float64      `json:"last_cr"`
	RNG           RNGState     `json:"rng"`
}

const deStateVersion = 1

// State returns a deep copy of the optimiser's state. A schedule that is not
// Constant or Cosine is recorded as Kind "custom". O(NP·n).
func (d *DE) State() DEState {
	return DEState{
		Version: deStateVersion, N: d.n, Strategy: d.strategy, Schedule: SpecOf(d.sched),
		NoForcedIndex: !d.forced, Strict: d.strict, Repair: d.repair, Minimize: d.minimize,
		Lo: slices.Clone(d.lo), Hi: slices.Clone(d.hi),
		Population: clone2(d.pop), Fitness: toJSONFloats(d.fit), Pending: clone2(d.pending),
		Generation: d.gen, Evals: d.evals, LastF: d.lastF, LastCR: d.lastCR,
		RNG: d.rng.State(),
	}
}

// RestoreDE validates s and returns an optimiser continuing from it. sched,
// when non-nil, replaces the recorded schedule (it is required when
// s.Schedule.Kind is "custom"); nil rebuilds it from s.Schedule. s is copied.
func RestoreDE(s DEState, sched Schedule) (*DE, error) {
	fail := func(format string, a ...any) (*DE, error) {
		return nil, fmt.Errorf("search: RestoreDE: "+format, a...)
	}
	if s.Version != deStateVersion {
		return fail("unsupported version %d", s.Version)
	}
	k, err := s.Strategy.randCount()
	if err != nil {
		return fail("%w", err)
	}
	if s.Repair != RepairModeClip && s.Repair != RepairModeReflect {
		return fail("unknown repair %q", string(s.Repair))
	}
	if sched == nil {
		if sched, err = s.Schedule.Schedule(); err != nil {
			return fail("%w", err)
		}
	}
	n, np := s.N, len(s.Population)
	if n < 1 || np < k+1 {
		return fail("need n >= 1 and a population of at least %d, got n=%d, %d", k+1, n, np)
	}
	if err := checkBounds(s.Lo, s.Hi, n); err != nil {
		return fail("%w", err)
	}
	for i, x := range s.Population {
		if len(x) != n {
			return fail("population[%d] has length %d, want %d", i, len(x), n)
		}
		if err := checkInside(x, s.Lo, s.Hi, fmt.Sprintf("population[%d]", i)); err != nil {
			return fail("%w", err)
		}
	}
	if s.Fitness != nil && len(s.Fitness) != np {
		return fail("fitness has %d values for %d individuals", len(s.Fitness), np)
	}
	if s.Pending != nil {
		if s.Fitness == nil {
			return fail("pending trials before the initial population was evaluated")
		}
		if len(s.Pending) != np {
			return fail("pending has %d trials, want %d", len(s.Pending), np)
		}
		for i, x := range s.Pending {
			if len(x) != n {
				return fail("pending[%d] has length %d, want %d", i, len(x), n)
			}
			if err := checkInside(x, s.Lo, s.Hi, fmt.Sprintf("pending[%d]", i)); err != nil {
				return fail("%w", err)
			}
		}
	}
	if s.Generation < 0 || s.Evals < 0 || !finite(s.LastF) || !(s.LastCR >= 0 && s.LastCR <= 1) {
		return fail("bad counters or last parameters (generation=%d evals=%d F=%v CR=%v)", s.Generation, s.Evals, s.LastF, s.LastCR)
	}
	d := &DE{
		n: n, np: np, strategy: s.Strategy, sched: sched, forced: !s.NoForcedIndex, strict: s.Strict,
		repair: s.Repair, minimize: s.Minimize, lo: slices.Clone(s.Lo), hi: slices.Clone(s.Hi),
		pop: clone2(s.Population), fit: fromJSONFloats(s.Fitness), pending: clone2(s.Pending),
		gen: s.Generation, evals: s.Evals, lastF: s.LastF, lastCR: s.LastCR, rng: &RNG{},
	}
	if err := d.rng.SetState(s.RNG); err != nil {
		return fail("%w", err)
	}
	return d, nil
}
