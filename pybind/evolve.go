package pybind

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/bridge"
	"github.com/npsfuse/npsfuse/gocore/evolve"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
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

// EvolveOrder returns, as a JSON list, the order in which generation
// "generation" of a weight-space evolution visits its "np" individuals
// (spec is JSON {"seed", "generation", "np", "shuffle"}; see evolve.Order).
func EvolveOrder(spec string) (order string, err error) {
	defer guard(&err)
	var s struct {
		Seed       uint64 `json:"seed"`
		Generation int    `json:"generation"`
		NP         int    `json:"np"`
		Shuffle    bool   `json:"shuffle"`
	}
	if err := decodeStrict(ErrSearch, "order spec", spec, &s); err != nil {
		return "", err
	}
	if s.NP < 1 || s.Generation < 0 {
		return "", fmt.Errorf("%w: order needs np >= 1 and generation >= 0, got %d, %d", ErrSearch, s.NP, s.Generation)
	}
	b, err := json.Marshal(evolve.Order(s.Seed, s.Generation, s.NP, s.Shuffle))
	return string(b), err
}

// EvolveTrial plans the trial of individual "individual" at generation
// "generation" (evolve.Config.Plan) and writes it into the offspring buffer
// (evolve.Offspring). config is the JSON of evolve.Config; fitness is the
// JSON list of the nPop individuals' fitness (null, NaN or ±Inf: failed).
// The pairs at arrays/schemas are the nPop flat individual buffers in index
// order, then the offspring buffer (written in place); all of one dtype and
// length. It returns JSON {"refs", "f", "cr", "j_rand", "taken"}.
func EvolveTrial(config string, generation, individual int, fitness string, nPop, arrays, schemas int) (info string, err error) {
	defer guard(&err)
	if nPop < 1 {
		return "", fmt.Errorf("%w: population of %d individuals", ErrSearch, nPop)
	}
	b, err := bridge.ImportAt(uintptr(arrays), uintptr(schemas), nPop+1)
	if err != nil {
		return "", err
	}
	defer b.Release()
	out := b.Tensors[nPop].Vec
	c, err := evolve.DecodeConfig([]byte(config), out.Len())
	if err != nil {
		return "", evolveErr(err)
	}
	var raw []*search.JSONFloat
	if err := json.Unmarshal([]byte(fitness), &raw); err != nil {
		return "", fmt.Errorf("%w: fitness: %v", ErrSearch, err)
	}
	if len(raw) != nPop {
		return "", fmt.Errorf("%w: %d fitness values for %d individuals", ErrSearch, len(raw), nPop)
	}
	fit := make([]float64, nPop)
	for i, v := range raw {
		fit[i] = math.Inf(-1)
		if v != nil {
			fit[i] = float64(*v)
		}
	}
	t, err := c.Plan(generation, individual, fit, out.Len())
	if err != nil {
		return "", evolveErr(err)
	}
	pop := make([]tensor.Vec, nPop)
	for i := range pop {
		pop[i] = b.Tensors[i].Vec
	}
	taken, err := evolve.Offspring(out, pop, &c, &t)
	if err != nil {
		return "", evolveErr(err)
	}
	res, err := json.Marshal(map[string]any{"refs": t.Refs, "f": t.F, "cr": t.CR, "j_rand": t.JRand, "taken": taken})
	return string(res), err
}
