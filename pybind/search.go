package pybind

import (
	"encoding/json"
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/search"
)

// ErrSearch marks bad optimizer or search-session arguments
// ("invalid search input", Python's ValueError).
var ErrSearch = search.ErrConfig

// OptNew creates an optimizer from the JSON of search.Config (the one
// factory, search.New): "cma" or "de", x0, sigma0, lo, hi, popsize, seed;
// for DE also strategy and schedule {kind: constant|cosine, ...}. It
// maximises unless minimize is set.
func OptNew(config string) (h int, err error) {
	return newHandle(ErrSearch, "optimizer config", config, search.New)
}

// OptAsk returns the next candidates as a JSON list of vectors.
func OptAsk(h int) (cands string, err error) {
	return withHandle(h, func(o search.Optimizer) (any, error) { return o.Ask(), nil })
}

// parseScores decodes a JSON list of scores (search.Scores, the daemon's
// rule); null (and NaN, ±Inf) mark a failed evaluation.
func parseScores(fitness string) ([]float64, error) {
	var f search.Scores
	if err := json.Unmarshal([]byte(fitness), &f); err != nil {
		return nil, fmt.Errorf("%w: fitness: %v", ErrSearch, err)
	}
	return f, nil
}

// OptTell reports the fitness (JSON list; higher is better; null, NaN or
// ±Inf mark a failed evaluation) of the last asked candidates.
func OptTell(h int, fitness string) (err error) {
	_, err = withHandle(h, func(o search.Optimizer) (any, error) {
		f, err := parseScores(fitness)
		if err != nil {
			return nil, err
		}
		if err := o.Tell(f); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSearch, err)
		}
		return nil, nil
	})
	return err
}

// OptBest returns JSON {"x": [...], "f": best fitness, "generation": g}.
func OptBest(h int) (best string, err error) {
	return withHandle(h, func(o search.Optimizer) (any, error) {
		x, f := o.Best()
		return map[string]any{"x": x, "f": search.JSONFloat(f), "generation": o.Generation()}, nil
	})
}

// OptState serialises the optimizer (search.Save: RNG, pending batch and a
// DE's schedule included); OptRestore continues it exactly.
func OptState(h int) (state string, err error) {
	return withHandle(h, func(o search.Optimizer) (any, error) { return search.Save(o) })
}

// OptRestore recreates an optimizer from OptState's JSON (search.Restore).
func OptRestore(state string) (h int, err error) {
	defer guard(&err)
	var s search.State
	if err := json.Unmarshal([]byte(state), &s); err != nil {
		return 0, fmt.Errorf("%w: state: %v", ErrSearch, err)
	}
	return keep(search.Restore(s))
}
