package pybind

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/search"
)

// ErrSearch marks bad optimizer arguments.
var ErrSearch = errors.New("invalid search input")

// optConfig is the JSON that creates an optimizer.
type optConfig struct {
	Optimizer string               `json:"optimizer"` // "cma" or "de"
	X0        []float64            `json:"x0"`
	Sigma0    float64              `json:"sigma0"`
	Lo        []float64            `json:"lo"`
	Hi        []float64            `json:"hi"`
	Popsize   int                  `json:"popsize"`
	Seed      uint64               `json:"seed"`
	Strategy  string               `json:"strategy"`
	Schedule  *search.ScheduleSpec `json:"schedule"`
	Minimize  bool                 `json:"minimize"`
}

// optState is the JSON of a saved optimizer.
type optState struct {
	Optimizer string               `json:"optimizer"`
	CMA       *search.CMAESState   `json:"cma,omitempty"`
	DE        *search.DEState      `json:"de,omitempty"`
	Schedule  *search.ScheduleSpec `json:"schedule,omitempty"`
}

var negInf = math.Inf(-1)

// deSchedules remembers each DE's schedule, which its state does not hold.
var deSchedules = scheduleMap{m: map[*search.DE]search.ScheduleSpec{}}

type scheduleMap struct {
	sync.Mutex
	m map[*search.DE]search.ScheduleSpec
}

func (s *scheduleMap) put(d *search.DE, sp search.ScheduleSpec) {
	s.Lock()
	s.m[d] = sp
	s.Unlock()
}

func (s *scheduleMap) get(d *search.DE) (search.ScheduleSpec, bool) {
	s.Lock()
	defer s.Unlock()
	sp, ok := s.m[d]
	return sp, ok
}

// OptNew creates a CMA-ES ("cma") or differential-evolution ("de")
// optimizer from JSON (x0, sigma0, lo, hi, popsize, seed; for DE also
// strategy and schedule {kind: constant|cosine, ...}). It maximises.
func OptNew(config string) (h int, err error) {
	defer guard(&err)
	var c optConfig
	if err := decodeStrict(ErrSearch, "optimizer config", config, &c); err != nil {
		return 0, err
	}
	switch c.Optimizer {
	case "cma":
		o, err := search.NewCMAES(search.CMAESOptions{X0: c.X0, Sigma0: c.Sigma0, Lo: c.Lo, Hi: c.Hi,
			Popsize: c.Popsize, Minimize: c.Minimize, Seed: c.Seed})
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrSearch, err)
		}
		return putHandle(o), nil
	case "de":
		var sched search.Schedule = search.Constant{F: 0.5, CR: 0.5}
		if c.Schedule != nil {
			if sched, err = c.Schedule.Schedule(); err != nil {
				return 0, fmt.Errorf("%w: %v", ErrSearch, err)
			}
		}
		o, err := search.NewDE(search.DEOptions{Lo: c.Lo, Hi: c.Hi, X0: c.X0, Popsize: c.Popsize,
			Strategy: search.Strategy(c.Strategy), Schedule: sched, Minimize: c.Minimize, Seed: c.Seed})
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrSearch, err)
		}
		deSchedules.put(o, search.SpecOf(sched))
		return putHandle(o), nil
	}
	return 0, fmt.Errorf("%w: unknown optimizer %q (want \"cma\" or \"de\")", ErrSearch, c.Optimizer)
}

// OptAsk returns the next candidates as a JSON list of vectors.
func OptAsk(h int) (cands string, err error) {
	defer guard(&err)
	o, err := getHandle[search.Optimizer](h)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(o.Ask())
	return string(b), err
}

// OptTell reports the fitness (JSON list; higher is better; null, NaN or
// ±Inf mark a failed evaluation) of the last asked candidates.
func OptTell(h int, fitness string) (err error) {
	defer guard(&err)
	o, err := getHandle[search.Optimizer](h)
	if err != nil {
		return err
	}
	var raw []*search.JSONFloat
	if err := json.Unmarshal([]byte(fitness), &raw); err != nil {
		return fmt.Errorf("%w: fitness: %v", ErrSearch, err)
	}
	f := make([]float64, len(raw))
	for i, v := range raw {
		if v == nil {
			f[i] = negInf
		} else {
			f[i] = float64(*v)
		}
	}
	if err := o.Tell(f); err != nil {
		return fmt.Errorf("%w: %v", ErrSearch, err)
	}
	return nil
}

// OptBest returns JSON {"x": [...], "f": best fitness, "generation": g}.
func OptBest(h int) (best string, err error) {
	defer guard(&err)
	o, err := getHandle[search.Optimizer](h)
	if err != nil {
		return "", err
	}
	x, f := o.Best()
	b, err := json.Marshal(map[string]any{"x": x, "f": search.JSONFloat(f), "generation": o.Generation()})
	return string(b), err
}

// OptState serialises the optimizer (including its RNG) as JSON;
// OptRestore continues it exactly.
func OptState(h int) (state string, err error) {
	defer guard(&err)
	handles.Lock()
	v := handles.objs[h]
	handles.Unlock()
	var s optState
	switch o := v.(type) {
	case *search.CMAES:
		st := o.State()
		s = optState{Optimizer: "cma", CMA: &st}
	case *search.DE:
		st := o.State()
		s = optState{Optimizer: "de", DE: &st}
		if sp, ok := deSchedules.get(o); ok {
			s.Schedule = &sp
		}
	default:
		return "", fmt.Errorf("invalid handle %d", h)
	}
	b, err := json.Marshal(s)
	return string(b), err
}

// OptRestore recreates an optimizer from OptState's JSON.
func OptRestore(state string) (h int, err error) {
	defer guard(&err)
	var s optState
	if err := json.Unmarshal([]byte(state), &s); err != nil {
		return 0, fmt.Errorf("%w: state: %v", ErrSearch, err)
	}
	switch {
	case s.Optimizer == "cma" && s.CMA != nil:
		o, err := search.RestoreCMAES(*s.CMA)
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrSearch, err)
		}
		return putHandle(o), nil
	case s.Optimizer == "de" && s.DE != nil:
		var sched search.Schedule = search.Constant{F: 0.5, CR: 0.5}
		if s.Schedule != nil {
			if sched, err = s.Schedule.Schedule(); err != nil {
				return 0, fmt.Errorf("%w: %v", ErrSearch, err)
			}
		}
		o, err := search.RestoreDE(*s.DE, sched)
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrSearch, err)
		}
		deSchedules.put(o, search.SpecOf(sched))
		return putHandle(o), nil
	}
	return 0, fmt.Errorf("%w: state names no known optimizer", ErrSearch)
}
