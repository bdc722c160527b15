package evolve

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/search"
)

// A Session is the engine of one weight-space evolution run (Evolver, Du,
// Li, Liu et al., 2024; DE/CADE, Jiang, Du et al., 2024; METHODS.md,
// "Search and evolution"): an ask/tell state machine that makes every
// decision of the run — which candidate comes next, its Trial (parent,
// references, F and CR of the generation's schedule, crossover choices),
// fitness bookkeeping, selection, when an accepted trial replaces its
// parent, best-so-far and per-generation history. It holds no weights: a
// door (Python's npsfuse.Evolver, the daemon's evolve session) keeps the
// population, builds each candidate's trial with Offspring, scores it and
// applies the replacements Tell returns. The state is small and
// serialisable (MarshalJSON, Restore), so the same seed gives the same run
// bit for bit through either door, and a saved run continues exactly.
//
// A run first scores the initial population: every individual (or, with
// Merger, the merge of the population), then Config.Generations
// generations of one trial per individual. Selection is one-to-one and
// strict: a trial is accepted when its score is higher than its parent's
// (with Merger, than the score of the current merge); non-finite scores
// count as −Inf, so a failed evaluation is never accepted.
//
// # Replacement
//
// One rule per strategy, the same in every door (Replacement):
//
//   - Evolver's operator, and any strategy with Merger: Immediate. The
//     generation visits the individuals in a random order (Order) and an
//     accepted trial replaces its parent at once, so the next trial sees
//     it. This is the authors' Evolver; with Merger it is the only sound
//     rule, because every trial is compared with the single running score
//     of the current merge, which two trials accepted together would
//     invalidate. Ask hands out one trial at a time.
//   - rand/1/bin, best/1/bin, current-to-best/1/bin: Generational. All np
//     trials of a generation are planned against the population (and
//     fitness, for x_best) at the generation's start, and the accepted ones
//     replace their parents together when its last score is told — classic
//     DE (Storn & Price 1997) and CADE. Ask hands out the whole generation,
//     so a door can score it concurrently (issue 17); the price is up to
//     np extra buffers for accepted trials waiting for the generation's end.
type Session struct {
	st sessionState
}

// SessionConfig describes a run: the operator and its schedule (Config),
// the population, the length of the individuals and the mode.
type SessionConfig struct {
	Config
	// Population is np, the number of individuals.
	Population int `json:"population"`
	// N is the number of evolved elements of an individual (the length of
	// the doors' flat buffers; the doors flatten the evolved tensors in
	// tensor-name order, so that both lay out a model alike).
	N int `json:"n"`
	// Merger selects Evolver "with merger": a candidate's score is the
	// score of the merge of the population with the trial in place of its
	// parent (the door merges), compared with the current merge's score.
	// It implies RandomRef and rules out best/1/bin and
	// current-to-best/1/bin, which need per-individual fitness.
	Merger bool `json:"merger,omitempty"`
}

// Phase is where a run is.
type Phase string

// The phases of a run.
const (
	// PhaseInit scores the initial population (with Merger, its merge).
	PhaseInit Phase = "init"
	// PhaseEvolve scores trials, generation after generation.
	PhaseEvolve Phase = "evolve"
	// PhaseDone follows the last generation.
	PhaseDone Phase = "done"
)

// Replacement is when an accepted trial takes its parent's place.
type Replacement string

// The replacement rules (see Session).
const (
	// Immediate replaces the parent as soon as the trial is told.
	Immediate Replacement = "immediate"
	// Generational replaces the parents of all accepted trials of a
	// generation when its last score is told.
	Generational Replacement = "generational"
)

// Candidate is one model a door builds and scores.
type Candidate struct {
	// Generation is the trial's generation, or −1 for the initial population.
	Generation int `json:"generation"`
	// Individual is the individual scored (initial population), or the
	// trial's parent i; −1 for the initial merge (Merger).
	Individual int `json:"individual"`
	// Trial is the offspring to build with Offspring (nil for the initial
	// population). Its JSON form omits SegMask; Session.Trial rebuilds it.
	Trial *Trial `json:"trial,omitempty"`
	// Merge says to score the merge of the population, with the trial in
	// place of its parent when Trial is set.
	Merge bool `json:"merge,omitempty"`
}

// Outcome is what Tell decided.
type Outcome struct {
	// Accepted reports that the told trial beat its parent (or, with
	// Merger, the current merge).
	Accepted bool `json:"accepted"`
	// Keep asks the door to keep the told trial's vector: it was accepted
	// and replaces its parent when the generation ends (Generational).
	Keep bool `json:"keep,omitempty"`
	// Replace lists the trials that take their parents' places now, in
	// order; every one was planned against the population as it is before
	// any of them is applied.
	Replace []Candidate `json:"replace,omitempty"`
}

// Record summarises one completed generation (0: the initial population).
type Record struct {
	Generation int `json:"generation"`
	// Best is the best individual's score, or with Merger the current
	// merge's score.
	Best search.JSONFloat `json:"best"`
	// Mean is the mean finite score of the individuals, or with Merger of
	// the generation's candidates (−Inf if none is finite).
	Mean search.JSONFloat `json:"mean"`
	// Accepted counts the accepted trials.
	Accepted int `json:"accepted"`
	// F and CR are the generation's (nil for generation 0).
	F  *float64 `json:"F"`
	CR *float64 `json:"CR"`
	// Evaluations is the number of scores told so far.
	Evaluations int `json:"evaluations"`
}

// sessionState is a Session's whole state, its JSON form.
type sessionState struct {
	Config SessionConfig `json:"config"`
	Phase  Phase         `json:"phase"`
	// Generation counts completed generations: in PhaseEvolve it is the
	// generation whose trials are being scored.
	Generation int `json:"generation"`
	// Told holds the scores told in the current generation (or of the
	// initial population), in Ask's order.
	Told []search.JSONFloat `json:"told"`
	// Held lists the parents whose accepted trial waits for the end of the
	// generation (Generational), in order.
	Held []int `json:"held"`
	// Accepted counts the current generation's accepted trials.
	Accepted int `json:"accepted"`
	// Fitness is each individual's score (−Inf until scored; with Merger
	// individuals are not scored on their own).
	Fitness []search.JSONFloat `json:"fitness"`
	// MergeScore is the current merge's score (Merger).
	MergeScore search.JSONFloat `json:"merge_score"`
	// Best is the best individual (highest fitness, lowest index on ties),
	// or −1 with Merger.
	Best    int      `json:"best"`
	History []Record `json:"history"`
	// Scores are all scores told, in order: replaying them (Replay)
	// rebuilds the run from the initial population.
	Scores []search.JSONFloat `json:"scores"`
}

// DecodeSessionConfig parses a SessionConfig from strict JSON (unknown
// fields and trailing data are errors) and validates it. Errors wrap
// ErrInput.
func DecodeSessionConfig(data []byte) (SessionConfig, error) {
	var c SessionConfig
	if err := decodeStrict(data, &c, "session config"); err != nil {
		return SessionConfig{}, err
	}
	return c, c.Validate()
}

func decodeStrict(data []byte, v any, what string) error {
	if err := fault.DecodeJSON(data, v, false); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInput, what, err)
	}
	return nil
}

// Validate checks the configuration and fills its defaults (Config's, and
// RandomRef with Merger). Errors wrap ErrInput.
func (c *SessionConfig) Validate() error {
	if c.N < 1 {
		return fmt.Errorf("%w: individuals need at least one evolved element, got n = %d", ErrInput, c.N)
	}
	if err := c.Config.Validate(c.N); err != nil {
		return err
	}
	need, _ := minPopulation(c.Strategy)
	if c.Population < need {
		return fmt.Errorf("%w: strategy %s needs a population of at least %d individuals, got %d", ErrInput, c.Strategy, need, c.Population)
	}
	if c.Merger {
		if c.Strategy == search.Best1Bin || c.Strategy == search.CurrentToBest1Bin {
			return fmt.Errorf("%w: strategy %s needs per-individual fitness, which the merger mode does not give; use evolver or rand/1/bin", ErrInput, c.Strategy)
		}
		c.RandomRef = true
	}
	return nil
}

// Replacement is the configuration's replacement rule (see Session).
func (c *SessionConfig) Replacement() Replacement {
	if c.Merger || c.Strategy == StrategyEvolver {
		return Immediate
	}
	return Generational
}

// NewSession starts a run of c (validated first).
func NewSession(c SessionConfig) (*Session, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	s := &Session{st: sessionState{Config: c, Phase: PhaseInit, Fitness: make([]search.JSONFloat, c.Population),
		Told: []search.JSONFloat{}, Held: []int{}, History: []Record{}, Scores: []search.JSONFloat{}}}
	for i := range s.st.Fitness {
		s.st.Fitness[i] = search.JSONFloat(math.Inf(-1))
	}
	s.st.MergeScore = search.JSONFloat(math.Inf(-1))
	s.st.Best = s.best()
	return s, nil
}

// MarshalJSON implements json.Marshaler: the whole state.
func (s *Session) MarshalJSON() ([]byte, error) { return json.Marshal(&s.st) }

// Restore rebuilds a Session from its JSON (MarshalJSON), checking that
// the state is consistent. Errors wrap ErrInput.
func Restore(data []byte) (*Session, error) {
	s := &Session{}
	if err := decodeStrict(data, &s.st, "session state"); err != nil {
		return nil, err
	}
	st := &s.st
	bad := func(format string, a ...any) (*Session, error) {
		return nil, fmt.Errorf("%w: session state: "+format, append([]any{ErrInput}, a...)...)
	}
	if err := st.Config.Validate(); err != nil {
		return bad("%s", strings.TrimPrefix(err.Error(), ErrInput.Error()+": "))
	}
	np := st.Config.Population
	switch st.Phase {
	case PhaseInit, PhaseEvolve, PhaseDone:
	default:
		return bad("unknown phase %q", st.Phase)
	}
	if len(st.Fitness) != np {
		return bad("%d fitness values for %d individuals", len(st.Fitness), np)
	}
	if st.Generation < 0 || st.Generation > st.Config.Generations || len(st.Told) >= s.batchSize() {
		return bad("generation %d with %d scores told is not a point of the run", st.Generation, len(st.Told))
	}
	for _, i := range st.Held {
		if i < 0 || i >= len(st.Told) || st.Config.Replacement() == Immediate {
			return bad("held individual %d has no told trial", i)
		}
	}
	st.Best = s.best()
	return s, nil
}

// Config is the run's configuration.
func (s *Session) Config() SessionConfig { return s.st.Config }

// Phase is where the run is.
func (s *Session) Phase() Phase { return s.st.Phase }

// Done reports whether every generation is complete.
func (s *Session) Done() bool { return s.st.Phase == PhaseDone }

// Generation is the number of completed generations.
func (s *Session) Generation() int { return s.st.Generation }

// Fitness returns each individual's score (−Inf: not scored, or failed).
func (s *Session) Fitness() []float64 { return floats(s.st.Fitness) }

// MergeScore is the current merge's score (Merger; −Inf before it is told).
func (s *Session) MergeScore() float64 { return float64(s.st.MergeScore) }

// Best returns the best individual and its score; with Merger, −1 and the
// current merge's score (the run's result is that merge).
func (s *Session) Best() (int, float64) {
	if s.st.Config.Merger {
		return -1, float64(s.st.MergeScore)
	}
	return s.st.Best, float64(s.st.Fitness[s.st.Best])
}

// History returns one record per completed generation.
func (s *Session) History() []Record { return append([]Record(nil), s.st.History...) }

// Scores returns every score told so far, in order (see Replay).
func (s *Session) Scores() []float64 { return floats(s.st.Scores) }

// Held returns the parents whose accepted trial waits for the end of the
// generation (Generational): a door restoring a saved run rebuilds those
// trials (Trial and Offspring; the population has not changed since).
func (s *Session) Held() []int { return append([]int(nil), s.st.Held...) }

func floats(x []search.JSONFloat) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// batchSize is how many scores the current generation (or the initial
// population) takes.
func (s *Session) batchSize() int {
	if s.st.Phase == PhaseInit && s.st.Config.Merger {
		return 1
	}
	return s.st.Config.Population
}

// parent is the parent of the k-th trial of the current generation.
func (s *Session) parent(k int) int {
	c := &s.st.Config
	if c.Replacement() == Immediate {
		return Order(c.Seed, s.st.Generation, c.Population, c.Strategy == StrategyEvolver)[k]
	}
	return k
}

// Trial plans the trial of parent i in the current generation against the
// current population; i must be the parent of a candidate Ask returns, or
// held (Held). O(np + segments).
func (s *Session) Trial(i int) (Trial, error) {
	st := &s.st
	if st.Phase != PhaseEvolve {
		return Trial{}, fmt.Errorf("%w: no trial is open in phase %s", ErrInput, st.Phase)
	}
	ok := false
	if st.Config.Replacement() == Immediate {
		ok = i == s.parent(len(st.Told))
	} else {
		ok = i >= 0 && i < st.Config.Population && (i >= len(st.Told) || contains(st.Held, i))
	}
	if !ok {
		return Trial{}, fmt.Errorf("%w: individual %d has no open trial in generation %d", ErrInput, i, st.Generation)
	}
	return st.Config.Plan(st.Generation, i, floats(st.Fitness), st.Config.N)
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// candidate is the current generation's candidate of parent i.
func (s *Session) candidate(i int) (Candidate, error) {
	t, err := s.Trial(i)
	if err != nil {
		return Candidate{}, err
	}
	return Candidate{Generation: s.st.Generation, Individual: i, Trial: &t, Merge: s.st.Config.Merger}, nil
}

// Ask returns the candidates awaiting a score, in the order Tell takes
// their scores: the initial individuals not scored yet (with Merger, the
// population's merge); with Generational replacement the generation's
// trials not scored yet; with Immediate replacement the one next trial.
// It changes nothing: asking again before Tell gives the same. Empty when
// done.
func (s *Session) Ask() ([]Candidate, error) {
	st := &s.st
	var out []Candidate
	switch {
	case st.Phase == PhaseDone:
	case st.Phase == PhaseInit && st.Config.Merger:
		out = append(out, Candidate{Generation: -1, Individual: -1, Merge: true})
	case st.Phase == PhaseInit:
		for i := len(st.Told); i < st.Config.Population; i++ {
			out = append(out, Candidate{Generation: -1, Individual: i})
		}
	case st.Config.Replacement() == Immediate:
		c, err := s.candidate(s.parent(len(st.Told)))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	default:
		for i := len(st.Told); i < st.Config.Population; i++ {
			c, err := s.candidate(i)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// Tell records the score of the first candidate Ask returns (non-finite:
// a failed evaluation, counted as −Inf) and decides its fate; the door
// applies the Outcome before its next Ask. Telling a finished run is an
// error wrapping ErrInput.
func (s *Session) Tell(score float64) (Outcome, error) {
	st := &s.st
	if st.Phase == PhaseDone {
		return Outcome{}, fmt.Errorf("%w: the evolution is finished", ErrInput)
	}
	if math.IsNaN(score) || math.IsInf(score, 0) {
		score = math.Inf(-1)
	}
	k := len(st.Told)
	var out Outcome
	if st.Phase == PhaseInit {
		if st.Config.Merger {
			st.MergeScore = search.JSONFloat(score)
		} else {
			st.Fitness[k] = search.JSONFloat(score)
		}
		s.told(score)
		if len(st.Told) == s.batchSize() {
			s.endGeneration(nil, nil)
		}
		return out, nil
	}
	c, err := s.candidate(s.parent(k))
	if err != nil {
		return out, err
	}
	i := c.Individual
	current := &st.Fitness[i]
	if st.Config.Merger {
		current = &st.MergeScore
	}
	out.Accepted = score > float64(*current)
	switch {
	case !out.Accepted:
	case st.Config.Replacement() == Immediate:
		*current = search.JSONFloat(score)
		out.Replace = []Candidate{c}
	default:
		out.Keep = true
		st.Held = append(st.Held, i)
	}
	if out.Accepted {
		st.Accepted++
	}
	s.told(score)
	if len(st.Told) < s.batchSize() {
		return out, nil
	}
	if st.Config.Replacement() == Generational {
		// Plan every held trial before any fitness changes (x_best).
		for _, j := range st.Held {
			h, err := s.candidate(j)
			if err != nil {
				return out, err
			}
			out.Replace = append(out.Replace, h)
		}
		for _, j := range st.Held {
			st.Fitness[j] = st.Told[j]
		}
	}
	F, CR, err := st.Config.Params(st.Generation)
	if err != nil {
		return out, err
	}
	s.endGeneration(&F, &CR)
	return out, nil
}

// told appends a told score.
func (s *Session) told(score float64) {
	s.st.Told = append(s.st.Told, search.JSONFloat(score))
	s.st.Scores = append(s.st.Scores, search.JSONFloat(score))
	s.st.Best = s.best()
}

// endGeneration records the generation just completed and opens the next.
func (s *Session) endGeneration(F, CR *float64) {
	st := &s.st
	st.Best = s.best()
	scored := st.Fitness
	r := Record{Generation: st.Generation, Best: st.Fitness[max(st.Best, 0)], Accepted: st.Accepted,
		F: F, CR: CR, Evaluations: len(st.Scores)}
	if st.Config.Merger {
		scored, r.Best = st.Told, st.MergeScore
	}
	var sum float64
	n := 0
	for _, v := range scored {
		if !math.IsInf(float64(v), -1) {
			sum += float64(v)
			n++
		}
	}
	r.Mean = search.JSONFloat(math.Inf(-1))
	if n > 0 {
		r.Mean = search.JSONFloat(sum / float64(n))
	}
	if st.Phase == PhaseInit {
		st.Phase = PhaseEvolve
	} else {
		st.Generation++
		r.Generation = st.Generation
	}
	st.History = append(st.History, r)
	st.Told, st.Held, st.Accepted = st.Told[:0], st.Held[:0], 0
	if st.Generation >= st.Config.Generations {
		st.Phase = PhaseDone
	}
}

// best is the best individual (−1 with Merger).
func (s *Session) best() int {
	if s.st.Config.Merger {
		return -1
	}
	return best(floats(s.st.Fitness), -1)
}

// Replay runs a new session of c through the given scores (a saved
// session's Scores), calling apply with every Outcome that replaces
// individuals, so that a door holding the initial population rebuilds the
// population of the saved run (every decision being deterministic).
func Replay(c SessionConfig, scores []float64, apply func(Outcome) error) (*Session, error) {
	s, err := NewSession(c)
	if err != nil {
		return nil, err
	}
	for k, v := range scores {
		out, err := s.Tell(v)
		if err != nil {
			return nil, fmt.Errorf("replaying score %d: %w", k, err)
		}
		if len(out.Replace) > 0 {
			if err := apply(out); err != nil {
				return nil, fmt.Errorf("replaying score %d: %w", k, err)
			}
		}
	}
	return s, nil
}
