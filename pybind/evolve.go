package pybind

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/bridge"
	"github.com/npsfuse/npsfuse/gocore/evolve"
)

// evolveErr re-labels gocore/evolve's input errors as ErrSearch, which
// Python turns into ValueError.
func evolveErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, evolve.ErrInput) {
		return fmt.Errorf("%w: %s", ErrSearch, strings.TrimPrefix(err.Error(), evolve.ErrInput.Error()+": "))
	}
	return err
}

// EvolveStart starts a weight-space evolution run: config is the JSON of
// evolve.SessionConfig; it returns the session's state as JSON, which
// Python keeps and passes to the other Evolve functions.
func EvolveStart(config string) (state string, err error) {
	defer guard(&err)
	c, err := evolve.DecodeSessionConfig([]byte(config))
	if err != nil {
		return "", evolveErr(err)
	}
	s, err := evolve.NewSession(c)
	if err != nil {
		return "", evolveErr(err)
	}
	b, err := json.Marshal(s)
	return string(b), err
}

// withState runs f on the session whose JSON is state and returns f's
// result as JSON; errors and panics come back guarded, relabelled by
// evolveErr. The session lives in Python between calls: only its JSON
// crosses.
func withState(state string, f func(*evolve.Session) (any, error)) (out string, err error) {
	defer guard(&err)
	s, err := evolve.Restore([]byte(state))
	if err != nil {
		return "", evolveErr(err)
	}
	r, err := f(s)
	if err != nil {
		return "", evolveErr(err)
	}
	b, err := json.Marshal(r)
	return string(b), err
}

// EvolveAsk returns, as a JSON list, the candidates the session in state
// awaits scores for (evolve.Session.Ask).
func EvolveAsk(state string) (candidates string, err error) {
	return withState(state, func(s *evolve.Session) (any, error) { return s.Ask() })
}

// EvolveTell tells the score of the first candidate EvolveAsk returns
// (evolve.Session.Tell); it returns JSON {"state", "outcome"}.
func EvolveTell(state string, score float64) (out string, err error) {
	return withState(state, func(s *evolve.Session) (any, error) {
		o, err := s.Tell(score)
		return map[string]any{"state": s, "outcome": o}, err
	})
}

// EvolveOffspring writes the trial of parent "individual" in the current
// generation of the session in state (evolve.Session.Trial) into the
// offspring buffer (evolve.Offspring). The pairs at arrays/schemas are the
// nPop flat individual buffers in index order, then the offspring buffer;
// all of one dtype and length. It returns how many elements came from the
// donor.
func EvolveOffspring(state string, individual, nPop, arrays, schemas int) (taken int, err error) {
	defer guard(&err)
	if nPop < 1 {
		return 0, fmt.Errorf("%w: population of %d individuals", ErrSearch, nPop)
	}
	b, err := bridge.ImportAt(uintptr(arrays), uintptr(schemas), nPop+1)
	if err != nil {
		return 0, err
	}
	defer b.Release()
	pop, out := vecs(b.Tensors[:nPop]), b.Tensors[nPop].Vec
	s, err := evolve.Restore([]byte(state))
	if err != nil {
		return 0, evolveErr(err)
	}
	c := s.Config()
	if nPop != c.Population || out.Len() != c.N {
		return 0, fmt.Errorf("%w: %d buffers of %d elements for a session of %d individuals of %d", ErrSearch, nPop, out.Len(), c.Population, c.N)
	}
	t, err := s.Trial(individual)
	if err != nil {
		return 0, evolveErr(err)
	}
	n, err := evolve.Offspring(out, pop, &c.Config, &t)
	return int(n), evolveErr(err)
}
