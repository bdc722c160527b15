package evolve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/search"
)

// ErrInput marks invalid configurations, trials or buffers.
var ErrInput = fault.New(fault.InvalidInput, "invalid evolve input")

// StrategyEvolver is the operator of Evolver (Du, Li, Liu et al., 2024):
// v = x_i + F·(x_ref − x_i), i.e. (1 − F)·x_i + F·x_ref. The other strategies
// are search.Rand1Bin, search.Best1Bin and search.CurrentToBest1Bin.
const StrategyEvolver search.Strategy = "evolver"

// Granularity is the unit binomial crossover takes from the donor.
type Granularity string

// The crossover granularities.
const (
	// Element takes each scalar from the donor with probability CR.
	Element Granularity = "element"
	// Tensor takes each caller-given segment (a tensor) whole.
	Tensor Granularity = "tensor"
	// Block takes each block of Config.BlockSize elements whole.
	Block Granularity = "block"
)

// SparseCR is the crossover rate below which element masks are drawn as
// geometric gaps (see Offspring) instead of one uniform per element.
const SparseCR = 1.0 / 16

// Config describes a weight-space DE run; it is the same for every trial.
type Config struct {
	// Strategy is StrategyEvolver or one of search's DE strategies.
	Strategy search.Strategy `json:"strategy"`
	// Schedule supplies F and CR per generation (constant or cosine).
	Schedule search.ScheduleSpec `json:"schedule"`
	// Granularity of crossover; empty means Element.
	Granularity Granularity `json:"granularity"`
	// BlockSize is the block length for Block granularity (>= 1).
	BlockSize int `json:"block_size"`
	// Segments are the boundaries 0 = s_0 < s_1 < … < s_K = n of the
	// segments (tensors) for Tensor granularity.
	Segments []int `json:"segments"`
	// ForceIndex forces one element (Element) or one segment (Tensor, Block)
	// to come from the donor, as classic DE does.
	ForceIndex bool `json:"force_index"`
	// RandomRef makes the Evolver operator always pick a random reference
	// (Evolver "with merger").
	RandomRef bool `json:"random_ref"`
	// Seed is the run's seed.
	Seed uint64 `json:"seed"`
	// Generations is G, the planned number of generations (>= 1).
	Generations int `json:"generations"`
	// Pool is Offspring's thread count (zero value: the process default);
	// not part of the state, and results do not depend on it.
	Pool parallel.Pool `json:"-"`
}

// DecodeConfig parses a Config from strict JSON (unknown fields and trailing
// data are errors) and validates it for buffers of n elements (n < 0 skips
// the checks that need n). Errors wrap ErrInput.
func DecodeConfig(data []byte, n int) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("%w: config: %v", ErrInput, err)
	}
	if dec.More() {
		return Config{}, fmt.Errorf("%w: config: trailing data after the JSON object", ErrInput)
	}
	if err := c.Validate(n); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks the configuration for buffers of n elements (n < 0 skips
// the segment checks). It fills the default granularity. Errors wrap ErrInput.
func (c *Config) Validate(n int) error {
	if c.Granularity == "" {
		c.Granularity = Element
	}
	if _, err := minPopulation(c.Strategy); err != nil {
		return err
	}
	if _, err := c.Schedule.Schedule(); err != nil {
		return fmt.Errorf("%w: %v", ErrInput, err)
	}
	if c.Generations < 1 {
		return fmt.Errorf("%w: generations must be >= 1, got %d", ErrInput, c.Generations)
	}
	switch c.Granularity {
	case Element:
	case Block:
		if c.BlockSize < 1 {
			return fmt.Errorf("%w: block granularity needs block_size >= 1, got %d", ErrInput, c.BlockSize)
		}
	case Tensor:
		s := c.Segments
		if len(s) < 2 || s[0] != 0 {
			return fmt.Errorf("%w: tensor granularity needs segment boundaries starting at 0, got %d boundaries", ErrInput, len(s))
		}
		for k := 1; k < len(s); k++ {
			if s[k] <= s[k-1] {
				return fmt.Errorf("%w: segment boundaries must increase strictly (s[%d]=%d, s[%d]=%d)", ErrInput, k-1, s[k-1], k, s[k])
			}
		}
		if n >= 0 && s[len(s)-1] != n {
			return fmt.Errorf("%w: segment boundaries end at %d, buffers hold %d elements", ErrInput, s[len(s)-1], n)
		}
	default:
		return fmt.Errorf("%w: unknown granularity %q (want element, tensor or block)", ErrInput, string(c.Granularity))
	}
	return nil
}

// minPopulation is the smallest population the strategy works with.
func minPopulation(s search.Strategy) (int, error) {
	switch s {
	case StrategyEvolver:
		return 2, nil
	case search.Rand1Bin:
		return 4, nil
	case search.Best1Bin, search.CurrentToBest1Bin:
		return 3, nil
	}
	return 0, fmt.Errorf("%w: unknown strategy %q (want evolver, rand/1/bin, best/1/bin or current-to-best/1/bin)", ErrInput, string(s))
}

// numSegments is the number of crossover segments of n elements (0 for Element).
func (c *Config) numSegments(n int) int {
	switch c.Granularity {
	case Tensor:
		return len(c.Segments) - 1
	case Block:
		return (n + c.BlockSize - 1) / c.BlockSize
	}
	return 0
}

// segment returns the element range [lo, hi) of segment k.
func (c *Config) segment(k, n int) (lo, hi int) {
	if c.Granularity == Tensor {
		return c.Segments[k], c.Segments[k+1]
	}
	lo = k * c.BlockSize
	return lo, min(lo+c.BlockSize, n)
}

// TrialKey is the stream key of individual i's trial at generation g:
// Mix(rng.Key(seed, "npsfuse/evolve/trial", g) + i).
func TrialKey(seed uint64, g, i int) uint64 {
	return rng.Mix(rng.Key(seed, "npsfuse/evolve/trial", g) + uint64(i))
}

// ChunkRNG is the generator of the element mask of chunk b of a trial with
// key k: search.NewRNG(rng.Bits(k, b)).
func ChunkRNG(k uint64, b int) *search.RNG { return search.NewRNG(rng.Bits(k, uint64(b))) }

// Order returns the order in which generation g visits the np individuals:
// 0, 1, …, np−1, shuffled when shuffle is set by Fisher–Yates on the stream
// search.NewRNG(rng.Key(seed, "npsfuse/evolve/order", g)) (for k = np−1 down
// to 1: swap k with IntN(k+1)). O(np).
func Order(seed uint64, g, np int, shuffle bool) []int {
	out := make([]int, max(np, 0))
	for k := range out {
		out[k] = k
	}
	if shuffle {
		r := search.NewRNG(rng.Key(seed, "npsfuse/evolve/order", g))
		for k := len(out) - 1; k > 0; k-- {
			j := r.IntN(k + 1)
			out[k], out[j] = out[j], out[k]
		}
	}
	return out
}

// Params returns F and CR of generation g from the schedule (drawing any
// jitter from search.NewRNG(rng.Key(seed, "npsfuse/evolve/schedule", g))), CR
// clamped to [0, 1]. A non-finite F is an error wrapping ErrInput.
func (c *Config) Params(g int) (F, CR float64, err error) {
	sched, err := c.Schedule.Schedule()
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %v", ErrInput, err)
	}
	F, CR = sched.Params(g, search.NewRNG(rng.Key(c.Seed, "npsfuse/evolve/schedule", g)))
	if math.IsNaN(F) || math.IsInf(F, 0) {
		return 0, 0, fmt.Errorf("%w: schedule gives F = %v at generation %d", ErrInput, F, g)
	}
	if !(CR > 0) { // also NaN
		CR = 0
	}
	CR = min(CR, 1)
	return F, CR, nil
}

// RefProbability is Evolver's probability p = 0.5/(G − g) + 0.5 of a random
// (rather than the best other) reference at generation g of G; 1 for g >= G−1.
func RefProbability(g, G int) float64 {
	if G-g <= 1 {
		return 1
	}
	return 0.5/float64(G-g) + 0.5
}

// Trial is the plan of one offspring: which individuals it combines, F, CR,
// and the crossover choices that are not drawn per chunk.
type Trial struct {
	Generation int     `json:"generation"`
	Individual int     `json:"individual"` // i, the parent (crossover target)
	F          float64 `json:"f"`
	CR         float64 `json:"cr"`
	// Refs are the other individuals: [x_ref] for the Evolver operator,
	// [r1, r2, r3] for rand/1/bin (v = x_r1 + F·(x_r2 − x_r3)), and
	// [best, r1, r2] for best/1/bin (v = x_best + F·(x_r1 − x_r2)) and
	// current-to-best/1/bin (v = x_i + F·(x_best − x_i) + F·(x_r1 − x_r2)).
	Refs []int `json:"refs"`
	// JRand is the forced element (Element granularity with ForceIndex), or −1.
	JRand int `json:"j_rand"`
	// SegMask says which segments (Tensor, Block) come from the donor.
	SegMask []bool `json:"-"`
}

// Plan draws the trial of individual i at generation g for a population
// whose fitness is given (higher is better; NaN and ±Inf rank worst; ties go
// to the lower index) and buffers of n elements. The draws, in order, on the
// trial stream RNG(TrialKey(seed, g, i)):
//
//  1. references — Evolver: u = Float64(); if RandomRef or u < p(g, G) then
//     x_ref = PickDistinct(1 excluding i), else x_ref = the best j ≠ i (no
//     draw). rand/1/bin: PickDistinct(3 excluding i). best/1/bin and
//     current-to-best/1/bin: PickDistinct(2 excluding i), best = the best
//     individual (may be i);
//  2. Element with ForceIndex: JRand = IntN(n); Tensor and Block:
//     BinomialMask over the segments with rate CR (forced when ForceIndex).
//
// c is validated first. O(np + number of segments).
func (c *Config) Plan(g, i int, fitness []float64, n int) (Trial, error) {
	np := len(fitness)
	if err := c.Validate(n); err != nil {
		return Trial{}, err
	}
	need, _ := minPopulation(c.Strategy)
	if np < need {
		return Trial{}, fmt.Errorf("%w: strategy %s needs a population of at least %d, got %d", ErrInput, c.Strategy, need, np)
	}
	if i < 0 || i >= np {
		return Trial{}, fmt.Errorf("%w: individual %d outside [0, %d)", ErrInput, i, np)
	}
	if g < 0 {
		return Trial{}, fmt.Errorf("%w: negative generation %d", ErrInput, g)
	}
	F, CR, err := c.Params(g)
	if err != nil {
		return Trial{}, err
	}
	t := Trial{Generation: g, Individual: i, F: F, CR: CR, JRand: -1}
	r := search.NewRNG(TrialKey(c.Seed, g, i))
	switch c.Strategy {
	case StrategyEvolver:
		u := r.Float64()
		t.Refs = make([]int, 1)
		if c.RandomRef || u < RefProbability(g, c.Generations) {
			search.PickDistinct(r, np, i, t.Refs)
		} else {
			t.Refs[0] = best(fitness, i)
		}
	case search.Rand1Bin:
		t.Refs = make([]int, 3)
		search.PickDistinct(r, np, i, t.Refs)
	default: // best/1/bin, current-to-best/1/bin
		t.Refs = make([]int, 3)
		search.PickDistinct(r, np, i, t.Refs[1:])
		t.Refs[0] = best(fitness, -1)
	}
	if c.Granularity == Element {
		if c.ForceIndex && n > 0 {
			t.JRand = r.IntN(n)
		}
	} else {
		t.SegMask = make([]bool, c.numSegments(n))
		search.BinomialMask(t.SegMask, CR, c.ForceIndex, r)
	}
	return t, nil
}

// best is the index of the highest fitness other than exclude (lowest index
// on ties; non-finite values rank below every finite one).
func best(fitness []float64, exclude int) int {
	b, bv := -1, math.Inf(-1)
	for j, v := range fitness {
		if j == exclude {
			continue
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			v = math.Inf(-1)
		}
		if b < 0 || v > bv {
			b, bv = j, v
		}
	}
	return b
}
