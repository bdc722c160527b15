package search

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// ErrConfig marks a bad optimizer configuration or saved state (wrapped by
// New and Restore, so doors can map it to their "invalid input" error).
var ErrConfig = fault.New(fault.InvalidInput, "invalid search input")

// Config is the JSON description of an optimizer, the one way every door
// (Python's npsfuse.optim.Optimizer, the NPS search session, the daemon's
// nps_search) creates one.
type Config struct {
	// Optimizer is "cma" (CMA-ES) or "de" (differential evolution).
	Optimizer string `json:"optimizer"`
	// X0 is the start: the CMA-ES mean, the DE's individual 0 (optional for DE).
	X0 []float64 `json:"x0,omitempty"`
	// Sigma0 is CMA-ES's initial step (0: 0.3·mean(Hi − Lo)).
	Sigma0 float64 `json:"sigma0,omitempty"`
	// Lo and Hi are the box (required for DE).
	Lo []float64 `json:"lo,omitempty"`
	Hi []float64 `json:"hi,omitempty"`
	// Popsize is the population (0: the optimizer's default).
	Popsize int `json:"popsize,omitempty"`
	// Seed seeds the optimizer's RNG.
	Seed uint64 `json:"seed,omitempty"`
	// Strategy is DE's mutation strategy (default rand/1/bin).
	Strategy string `json:"strategy,omitempty"`
	// Schedule is DE's F/CR schedule (default constant F = CR = 0.5).
	Schedule *ScheduleSpec `json:"schedule,omitempty"`
	// Minimize makes lower fitness better.
	Minimize bool `json:"minimize,omitempty"`
}

// New builds the optimizer c describes; options of the other optimizer
// (a strategy for "cma", sigma0 for "de") are ignored. Errors wrap ErrConfig.
func New(c Config) (Optimizer, error) {
	switch c.Optimizer {
	case "cma":
		o, err := NewCMAES(CMAESOptions{X0: c.X0, Sigma0: c.Sigma0, Lo: c.Lo, Hi: c.Hi,
			Popsize: c.Popsize, Minimize: c.Minimize, Seed: c.Seed})
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		return o, nil
	case "de":
		var sched Schedule = Constant{F: 0.5, CR: 0.5}
		if c.Schedule != nil {
			var err error
			if sched, err = c.Schedule.Schedule(); err != nil {
				return nil, fmt.Errorf("%w: schedule: %v", ErrConfig, err)
			}
		}
		o, err := NewDE(DEOptions{Lo: c.Lo, Hi: c.Hi, X0: c.X0, Popsize: c.Popsize,
			Strategy: Strategy(c.Strategy), Schedule: sched, Minimize: c.Minimize, Seed: c.Seed})
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrConfig, err)
		}
		return o, nil
	}
	return nil, fmt.Errorf("%w: unknown optimizer %q (want \"cma\" or \"de\")", ErrConfig, c.Optimizer)
}

// State is the JSON of a saved optimizer: its kind and its whole state
// (RNG and pending batch included; a DE's schedule is inside DEState).
type State struct {
	Optimizer string      `json:"optimizer"`
	CMA       *CMAESState `json:"cma,omitempty"`
	DE        *DEState    `json:"de,omitempty"`
}

// Save returns o's state. o must be a *CMAES or a *DE.
func Save(o Optimizer) (State, error) {
	switch v := o.(type) {
	case *CMAES:
		st := v.State()
		return State{Optimizer: "cma", CMA: &st}, nil
	case *DE:
		st := v.State()
		return State{Optimizer: "de", DE: &st}, nil
	}
	return State{}, fmt.Errorf("search: cannot save an optimizer of type %T", o)
}

// Restore rebuilds the optimizer Save saved; it continues bit for bit.
// Errors wrap ErrConfig.
func Restore(s State) (Optimizer, error) {
	var (
		o   Optimizer
		err error
	)
	switch {
	case s.Optimizer == "cma" && s.CMA != nil:
		o, err = RestoreCMAES(*s.CMA)
	case s.Optimizer == "de" && s.DE != nil:
		o, err = RestoreDE(*s.DE, nil)
	default:
		return nil, fmt.Errorf("%w: the state names no known optimizer (want \"cma\" with \"cma\", or \"de\" with \"de\")", ErrConfig)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return o, nil
}
