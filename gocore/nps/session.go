package nps

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/npsfuse/npsfuse/gocore/search"
)

// A Session is the engine of one NPS-Pruning search (METHODS.md,
// "NPS-Pruning", step 4) and of NPS fusion's λ search: an ask/tell state
// machine over a box [Lo, Hi]^d that makes every decision of the run — the
// start point first, then one optimizer generation per ask; which
// candidate is the best so far; per-generation history; when the planned
// generations are done. It holds no tensors: a door (Python's
// npsfuse.nps.Search, prune and fuse; the daemon's nps_search session)
// builds each candidate from its decomposition (Decomposition.Build, whose
// inputs every door lays out in tensor-name order, so a global top-k ranks
// ties in name order as merge does), scores it and tells the score. The
// state is small and serialisable (MarshalJSON, RestoreSession), so a
// fixed seed gives the same run bit for bit through either door, and a
// saved run continues exactly.
//
// The start point (Config.Start, all weights 1 for NPS: plain global
// magnitude top-k of τ) is asked alone and scored as it is; it is not told
// to the optimizer, whose start (the CMA-ES mean, the DE's individual 0)
// is the start clipped into the box. Every later ask is one optimizer
// generation. The best point is the first one with the best score, so ties
// keep the start: on the door's metric the result is never worse than the
// start. A non-finite score is a failed evaluation: it is counted, ranks
// worst and is never the best.
type Session struct {
	st   sessionState
	opt  search.Optimizer
	sign float64 // +1 maximising, −1 minimising
}

// SessionConfig describes a search.
type SessionConfig struct {
	// Config is the optimizer (the one factory, search.New). Its X0 is
	// set by NewSession: Start clipped into [Lo, Hi]. A "de" without a
	// schedule gets search.DefaultCosine(max(Generations, 1)).
	search.Config
	// Start is the point scored first, as it is (it may lie outside the box).
	Start []float64 `json:"start"`
	// Generations is the planned number of optimizer generations after the
	// start point: Done reports them over (asking beyond is allowed). A
	// negative value plans none: the door ends the search.
	Generations int `json:"generations"`
	// StartInPopulation makes the start (clipped into the box) the DE's
	// own individual 0 instead of a separate ask (npsfuse.search_merge's
	// rule): the first ask is the initial population, its first score the
	// start's, and it counts as a generation. Only for "de": CMA-ES never
	// samples its mean.
	StartInPopulation bool `json:"start_in_population,omitempty"`
}

// Record summarises one optimizer generation (the start point is not one).
type Record struct {
	// Generation counts from 1.
	Generation int `json:"generation"`
	// Best and Mean are over the generation's successful scores (nil if
	// every evaluation failed); X is the candidate with the best of them.
	Best *float64  `json:"best"`
	Mean *float64  `json:"mean"`
	X    []float64 `json:"x"`
	// Failed counts the failed evaluations.
	Failed int `json:"failed"`
	// BestSoFar is the best score up to this generation, start included
	// (nil while none succeeded).
	BestSoFar *float64 `json:"best_so_far"`
}

// sessionState is the session's JSON: everything but the optimizer object,
// whose state is Optimizer.
type sessionState struct {
	Version   int               `json:"version"`
	Config    SessionConfig     `json:"config"`
	Started   bool              `json:"started"`
	Asked     bool              `json:"asked"`
	History   []Record          `json:"history"`
	BestX     []float64         `json:"best_x"`
	BestF     search.JSONFloat  `json:"best_f"`
	StartF    *search.JSONFloat `json:"start_f"`
	Evals     int               `json:"evals"`
	Failures  int               `json:"failures"`
	Optimizer search.State      `json:"optimizer"`
}

const sessionVersion = 1

// ErrNotAsked is returned (wrapped) by Tell without a pending Ask.
var ErrNotAsked = errors.New("tell() needs a pending ask(): call ask() first")

// NewSession validates c and starts a search. Errors wrap search.ErrConfig.
func NewSession(c SessionConfig) (*Session, error) {
	if len(c.Start) == 0 {
		return nil, fmt.Errorf("%w: the start point has no coordinates", search.ErrConfig)
	}
	for i, v := range c.Start {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%w: start[%d] is %v", search.ErrConfig, i, v)
		}
	}
	c.Start = slices.Clone(c.Start)
	c.X0 = slices.Clone(c.Start)
	if len(c.Lo) == len(c.X0) && len(c.Hi) == len(c.X0) {
		for i := range c.X0 {
			c.X0[i] = min(max(c.X0[i], c.Lo[i]), c.Hi[i])
		}
	}
	if c.StartInPopulation && c.Optimizer != "de" {
		return nil, fmt.Errorf("%w: start_in_population needs \"de\" (CMA-ES does not score its mean)", search.ErrConfig)
	}
	if c.Optimizer == "de" && c.Schedule == nil {
		sp := search.SpecOf(search.DefaultCosine(max(c.Generations, 1)))
		c.Schedule = &sp
	}
	opt, err := search.New(c.Config)
	if err != nil {
		return nil, err
	}
	s := &Session{opt: opt}
	s.st = sessionState{Version: sessionVersion, Config: c, History: []Record{}}
	s.setSign()
	s.st.BestF = search.JSONFloat(s.worst())
	return s, nil
}

// RestoreSession continues the session whose JSON (MarshalJSON) is data,
// bit for bit. Errors wrap search.ErrConfig.
func RestoreSession(data []byte) (*Session, error) {
	var st sessionState
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("%w: search session state: %v", search.ErrConfig, err)
	}
	if st.Version != sessionVersion {
		return nil, fmt.Errorf("%w: search session state version %d (want %d)", search.ErrConfig, st.Version, sessionVersion)
	}
	if len(st.Config.Start) == 0 || len(st.Config.X0) != len(st.Config.Start) {
		return nil, fmt.Errorf("%w: search session state without a start point", search.ErrConfig)
	}
	opt, err := search.Restore(st.Optimizer)
	if err != nil {
		return nil, err
	}
	if st.History == nil {
		st.History = []Record{}
	}
	s := &Session{st: st, opt: opt}
	s.setSign()
	return s, nil
}

func (s *Session) setSign() {
	s.sign = 1
	if s.st.Config.Minimize {
		s.sign = -1
	}
}

// worst is the told value a failed evaluation counts as.
func (s *Session) worst() float64 { return s.sign * math.Inf(-1) }

// value maps a told score to a maximised one (failed: −Inf).
func (s *Session) value(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return math.Inf(-1)
	}
	return s.sign * f
}

// MarshalJSON is the session's whole state (the optimizer's included).
func (s *Session) MarshalJSON() ([]byte, error) {
	st, err := search.Save(s.opt)
	if err != nil {
		return nil, err
	}
	s.st.Optimizer = st
	return json.Marshal(s.st)
}

// Config is the session's configuration (X0 and the DE schedule filled in).
func (s *Session) Config() SessionConfig { return s.st.Config }

// Started reports whether the start point's score has been told.
func (s *Session) Started() bool { return s.st.Started }

// Generation is the number of completed optimizer generations.
func (s *Session) Generation() int { return len(s.st.History) }

// Done reports whether the planned generations have run.
func (s *Session) Done() bool {
	return s.st.Started && s.st.Config.Generations >= 0 && len(s.st.History) >= s.st.Config.Generations
}

// Best is the best point scored so far and its score (nil and the worst
// value, −Inf when maximising, while none succeeded).
func (s *Session) Best() ([]float64, float64) {
	return slices.Clone(s.st.BestX), float64(s.st.BestF)
}

// StartScore is the start point's score (failed: the worst value); ok is
// false before it is told.
func (s *Session) StartScore() (f float64, ok bool) {
	if s.st.StartF == nil {
		return 0, false
	}
	return float64(*s.st.StartF), true
}

// History is one record per completed generation (a copy).
func (s *Session) History() []Record {
	out := make([]Record, len(s.st.History))
	for i, r := range s.st.History {
		r.X = slices.Clone(r.X)
		out[i] = r
	}
	return out
}

// Evals and Failures count the scored candidates and the failed ones.
func (s *Session) Evals() int { return s.st.Evals }

// Failures counts the failed evaluations.
func (s *Session) Failures() int { return s.st.Failures }

// Pending reports whether candidates have been asked and not yet told.
func (s *Session) Pending() bool { return s.st.Asked }

// Summary is a session's progress, as both doors report it.
type Summary struct {
	Started    bool             `json:"started"`
	Pending    bool             `json:"pending"`
	Generation int              `json:"generation"`
	Done       bool             `json:"done"`
	BestX      []float64        `json:"best_x"`
	BestF      search.JSONFloat `json:"best_f"`
	// StartF is the start point's score (nil before it is told).
	StartF   *search.JSONFloat `json:"start_f"`
	Evals    int               `json:"evaluations"`
	Failures int               `json:"failures"`
	History  []Record          `json:"history"`
}

// Summary reports the session's progress (copies).
func (s *Session) Summary() Summary {
	x, f := s.Best()
	out := Summary{Started: s.st.Started, Pending: s.st.Asked, Generation: s.Generation(), Done: s.Done(),
		BestX: x, BestF: search.JSONFloat(f), Evals: s.st.Evals, Failures: s.st.Failures, History: s.History()}
	if sf, ok := s.StartScore(); ok {
		v := search.JSONFloat(sf)
		out.StartF = &v
	}
	return out
}

// Ask returns the candidates to score: the start point alone first, then
// one optimizer generation per call. Asking again before Tell returns the
// same candidates.
func (s *Session) Ask() [][]float64 {
	s.st.Asked = true
	if !s.st.Started && !s.st.Config.StartInPopulation {
		return [][]float64{slices.Clone(s.st.Config.Start)}
	}
	return s.opt.Ask()
}

// Tell records one score per asked candidate, in Ask's order (higher is
// better unless the search minimises; a non-finite score marks a failed
// evaluation). Errors: ErrNotAsked without a pending Ask, search.ErrConfig
// for a wrong count; the session is then unchanged.
func (s *Session) Tell(scores []float64) error {
	if !s.st.Asked {
		return ErrNotAsked
	}
	pts := s.Ask()
	if len(scores) != len(pts) {
		return fmt.Errorf("%w: %d scores for %d candidates", search.ErrConfig, len(scores), len(pts))
	}
	told := make([]float64, len(scores))
	for i, f := range scores {
		told[i] = f
		if math.IsNaN(f) || math.IsInf(f, 0) {
			told[i] = s.worst()
		}
	}
	separate := !s.st.Started && !s.st.Config.StartInPopulation
	if !separate {
		if err := s.opt.Tell(told); err != nil {
			return fmt.Errorf("%w: %v", search.ErrConfig, err)
		}
		s.st.History = append(s.st.History, s.record(pts, told))
	}
	if !s.st.Started {
		f := search.JSONFloat(told[0])
		s.st.StartF = &f
		s.st.Started = true
	}
	for i, f := range told {
		if s.value(f) > s.value(float64(s.st.BestF)) {
			s.st.BestF, s.st.BestX = search.JSONFloat(f), slices.Clone(pts[i])
		}
		s.st.Evals++
		if math.IsInf(f, 0) {
			s.st.Failures++
		}
	}
	if n := len(s.st.History); n > 0 && len(s.st.BestX) > 0 {
		b := float64(s.st.BestF)
		s.st.History[n-1].BestSoFar = &b
	}
	s.st.Asked = false
	return nil
}

// record summarises a generation's scores.
func (s *Session) record(pts [][]float64, told []float64) Record {
	r := Record{Generation: len(s.st.History) + 1}
	gi, sum, ok := -1, 0.0, 0
	for i, f := range told {
		if math.IsInf(f, 0) {
			r.Failed++
			continue
		}
		sum += f
		ok++
		if gi < 0 || s.value(f) > s.value(told[gi]) {
			gi = i
		}
	}
	if gi >= 0 {
		best, mean := told[gi], sum/float64(ok)
		r.Best, r.Mean, r.X = &best, &mean, slices.Clone(pts[gi])
	}
	return r
}
