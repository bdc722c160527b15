package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/evolve"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/session"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// evolveSpec is an evolve session: weight-space evolution of a population
// of fine-tuned models (METHODS.md, "Search and evolution"): Evolver's
// operator (Du, Li, Liu et al., 2024) or DE/CADE's (Jiang, Du et al.,
// 2024). gocore/evolve.Session makes every decision, as it does for
// npsfuse.Evolver; the daemon holds the population and builds the
// candidates, the client scores them on its dev set.
type evolveSpec struct {
	// Models are the initial population (every one with the same tensors).
	Models []string `json:"models"`
	// Strategy: "evolver" (default), "rand/1/bin" (CADE with a cosine
	// schedule and no forced index), "best/1/bin", "current-to-best/1/bin".
	Strategy string `json:"strategy,omitempty"`
	// Schedule of F and CR (default constant F = 0.5, CR = 0.5, Evolver's).
	Schedule *search.ScheduleSpec `json:"schedule,omitempty"`
	// Granularity of crossover (element, tensor, block) and BlockSize.
	Granularity string `json:"granularity,omitempty"`
	BlockSize   int    `json:"block_size,omitempty"`
	ForceIndex  bool   `json:"force_index,omitempty"`
	RandomRef   bool   `json:"random_ref,omitempty"`
	Seed        uint64 `json:"seed,omitempty"`
	// Generations G (default 15); Ask reports done after them.
	Generations int `json:"generations,omitempty"`
	// Exclude lists regular expressions of names of tensors not evolved
	// (task heads; the engine's rule, evolve.Exclude, as npsfuse.Evolver's):
	// every individual keeps its own.
	Exclude []string `json:"exclude,omitempty"`
	// Merge selects Evolver "with merger": a candidate is the merge (by
	// this method, of Base and the population with the trial in place of
	// its parent), and so is the result. MergeParams are its parameters,
	// resolved by the engine's spec table as npsfuse.merge's are.
	Merge       string       `json:"merge,omitempty"`
	Base        string       `json:"base,omitempty"`
	MergeParams *mergeValues `json:"merge_params,omitempty"`
	Result      resultSpec   `json:"result,omitempty"`
	Cleanup     []string     `json:"cleanup,omitempty"`
}

// mergeValues is the JSON of merge.Values (Python's _spec.payload).
type mergeValues struct {
	Global map[string]any   `json:"global,omitempty"`
	Models []map[string]any `json:"models,omitempty"`
}

// config is the session's configuration for individuals of n elements.
func (s *evolveSpec) config(n int, segments []int) (evolve.SessionConfig, error) {
	c := evolve.SessionConfig{Config: evolve.Config{Strategy: search.Strategy(s.Strategy), Schedule: *s.Schedule,
		Granularity: evolve.Granularity(s.Granularity), BlockSize: s.BlockSize, ForceIndex: s.ForceIndex,
		RandomRef: s.RandomRef, Seed: s.Seed, Generations: s.Generations}, Population: len(s.Models), N: n, Merger: s.Merge != ""}
	if c.Granularity == evolve.Tensor {
		c.Segments = segments
	}
	if err := c.Validate(); err != nil {
		return c, invalid("%v", err)
	}
	return c, nil
}

// mergeParams resolves the merger's parameters.
func (s *evolveSpec) mergeParams() (merge.Params, error) {
	if ms, ok := merge.Spec(s.Merge); ok && ms.DataAware {
		return merge.Params{}, invalid("merge: %s needs statistics, which an evolve session does not take", s.Merge)
	}
	var v merge.Values
	if s.MergeParams != nil {
		v = merge.Values{Global: s.MergeParams.Global, Models: s.MergeParams.Models}
	}
	p, bad := merge.Resolve(s.Merge, len(s.Models), v)
	if len(bad) > 0 {
		return p, invalid("merge_params: %s", strings.Join(merge.Format(bad, merge.NameWhere), "; "))
	}
	return p, nil
}

// check validates and completes an evolve spec at submit time.
func (s *evolveSpec) check(e *Env) error {
	if s.Strategy == "" {
		s.Strategy = string(evolve.StrategyEvolver)
	}
	if s.Schedule == nil {
		s.Schedule = &search.ScheduleSpec{Kind: "constant", F: 0.5, CR: 0.5}
	}
	if s.Generations == 0 {
		s.Generations = 15
	}
	if len(s.Models) < 2 {
		return invalid("models must list the initial population (at least 2 fine-tuned models)")
	}
	if _, err := s.config(1, []int{0, 1}); err != nil {
		return err
	}
	for i, m := range s.Models {
		if _, err := e.Resolve(m, fmt.Sprintf("models[%d]", i)); err != nil {
			return err
		}
	}
	switch {
	case s.Merge != "":
		if _, err := e.Resolve(s.Base, "base"); err != nil {
			return err
		}
		if _, err := s.mergeParams(); err != nil {
			return err
		}
	case s.Base != "" || s.MergeParams != nil:
		return invalid("base and merge_params belong to merge (Evolver with merger)")
	}
	if _, err := evolve.CompileExclude(s.Exclude); err != nil {
		return invalid("%v", err)
	}
	if err := s.Result.check(e); err != nil {
		return err
	}
	return e.CheckCleanup(s.Cleanup)
}

// evolveSession is a running evolve session.
type evolveSession struct {
	session.Guard
	rc      *runCtx
	pool    parallel.Pool // the daemon's thread count (Env.Pool), set before any kernel runs
	cancel  context.CancelFunc
	spec    evolveSpec
	cfg     evolve.SessionConfig
	s       *evolve.Session
	srcs    []tensors.Source
	base    tensors.Source // the merge base (Merge), else nil
	params  merge.Params   // the merger's (Merge)
	names   []string       // evolved tensors, in name order: the flattened order
	index   map[string]int // position of each evolved tensor in names
	metas   []tensors.Meta
	offsets []int // start of each evolved tensor in the flat buffer
	n       int
	pop     [][]float32
	scratch []float32
	release func()
}

func runEvolve(rc *runCtx, s *evolveSpec) (any, Session, error) {
	es := &evolveSession{Guard: session.Guard{Closed: errClosed}, spec: *s, pool: rc.env.Pool}
	ok := false
	defer func() {
		if !ok {
			es.free()
		}
	}()
	for i, ref := range s.Models {
		src, err := rc.env.openRef(ref, fmt.Sprintf("models[%d]", i))
		if err != nil {
			return nil, nil, err
		}
		es.srcs = append(es.srcs, src)
	}
	var err error
	if s.Merge != "" {
		if es.base, err = rc.env.openRef(s.Base, "base"); err != nil {
			return nil, nil, err
		}
		if es.params, err = s.mergeParams(); err != nil {
			return nil, nil, err
		}
	}
	if err := es.layout(); err != nil {
		return nil, nil, err
	}
	np := len(es.srcs)
	need := int64(es.n) * 4 * int64(np+1)
	if s.Strategy != string(evolve.StrategyEvolver) {
		need += int64(es.n) * 4 * int64(np) // accepted offspring of a generation
	}
	if es.release, err = rc.reserve(need, "the population"); err != nil {
		return nil, nil, err
	}
	if es.cfg, err = s.config(es.n, append(slices.Clone(es.offsets), es.n)); err != nil {
		return nil, nil, err
	}
	rc.progress(store.Progress{Message: fmt.Sprintf("loading %d individuals of %d parameters", np, es.n)})
	for k, src := range es.srcs {
		x := make([]float32, es.n)
		for t, name := range es.names {
			v, err := sourceVec(src, name)
			if err != nil {
				return nil, nil, err
			}
			v.Load(x[es.offsets[t]:es.offsets[t]+v.Len()], 0)
		}
		if i := firstNaN(x); i >= 0 {
			return nil, nil, invalid("models[%d] has a non-finite value at flat index %d", k, i)
		}
		es.pop = append(es.pop, x)
	}
	es.scratch = make([]float32, es.n)
	if es.s, err = es.restore(rc.job.Checkpoint); err != nil {
		return nil, nil, err
	}
	es.rc, es.cancel = rc.detach()
	es.rc.progress(es.progress())
	ok = true
	return nil, es, nil
}

// restore starts the session, or resumes it from its checkpoint (the
// session's JSON) by replaying the told scores on the initial population;
// the replayed state must be the saved one.
func (e *evolveSession) restore(checkpoint json.RawMessage) (*evolve.Session, error) {
	if len(checkpoint) == 0 {
		return evolve.NewSession(e.cfg)
	}
	saved, err := evolve.Restore(checkpoint)
	if err != nil {
		return nil, fmt.Errorf("session checkpoint: %w", err)
	}
	s, err := evolve.Replay(e.cfg, saved.Scores(), e.apply)
	if err != nil {
		return nil, fmt.Errorf("session checkpoint: %w", err)
	}
	a, _ := json.Marshal(s)
	b, _ := json.Marshal(saved)
	if !bytes.Equal(a, b) {
		return nil, fmt.Errorf("session checkpoint: its scores replayed on these models give another state (did the models or the spec change?)")
	}
	return s, nil
}

func firstNaN(x []float32) int {
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return i
		}
	}
	return -1
}

// layout picks the evolved tensors (floating-point, not excluded, in name
// order, as npsfuse.Evolver lays them out) and checks every individual has
// them with the same shapes; with a merger, every model must have exactly
// the base's tensors, as npsfuse.merge requires.
func (e *evolveSession) layout() error {
	exclude, err := evolve.CompileExclude(e.spec.Exclude)
	if err != nil {
		return invalid("%v", err)
	}
	first := e.srcs[0]
	e.index = map[string]int{}
	for _, name := range slices.Sorted(slices.Values(first.Names())) {
		m, _ := first.Meta(name)
		if _, ok := tensors.KernelDType(m.DType); !ok || exclude.Excludes(name) {
			continue
		}
		for k, src := range e.srcs[1:] {
			mm, ok := src.Meta(name)
			if !ok || tensors.FormatShape(mm.Shape) != tensors.FormatShape(m.Shape) {
				return invalid("models[%d] lacks tensor %q of shape [%s] (every individual needs the same evolved tensors; exclude heads by name)", k+1, name, tensors.FormatShape(m.Shape))
			}
			if _, ok := tensors.KernelDType(mm.DType); !ok {
				return invalid("models[%d]: tensor %q is not floating-point", k+1, name)
			}
		}
		e.index[name] = len(e.names)
		e.names = append(e.names, name)
		e.metas = append(e.metas, m)
		e.offsets = append(e.offsets, e.n)
		e.n += int(m.Numel())
	}
	if e.n == 0 {
		return invalid("no floating-point tensors to evolve")
	}
	if e.base == nil {
		return nil
	}
	for k, src := range e.srcs {
		if len(src.Names()) != len(e.base.Names()) {
			return invalid("models[%d] has %d tensors, the base %d (the merger needs the same tensors)", k, len(src.Names()), len(e.base.Names()))
		}
		for _, name := range e.base.Names() {
			bm, _ := e.base.Meta(name)
			if m, ok := src.Meta(name); !ok || tensors.FormatShape(m.Shape) != tensors.FormatShape(bm.Shape) {
				return invalid("models[%d] lacks the base's tensor %q of shape [%s]", k, name, tensors.FormatShape(bm.Shape))
			}
		}
	}
	return nil
}

func (e *evolveSession) progress() store.Progress {
	p := store.Progress{Done: int64(e.s.Generation()), Total: int64(e.spec.Generations), Unit: "generations"}
	if b, f := e.s.Best(); !math.IsInf(f, -1) {
		p.Message = fmt.Sprintf("best %.6g (individual %d; −1: the merge)", f, b)
	}
	return p
}

// offspring computes a trial's vector into dst.
func (e *evolveSession) offspring(t evolve.Trial, dst []float32) error {
	pop := make([]tensor.Vec, len(e.pop))
	for k, x := range e.pop {
		pop[k] = tensor.FromF32(x)
	}
	c := e.cfg.Config
	c.Pool = e.pool
	_, err := evolve.Offspring(tensor.FromF32(dst), pop, &c, &t)
	return err
}

// apply puts the trials an outcome accepts in their parents' places: all
// are built from the population before any replaces its parent.
func (e *evolveSession) apply(o evolve.Outcome) error {
	next := make([][]float32, len(o.Replace))
	for k, c := range o.Replace {
		next[k] = e.scratch
		if k > 0 {
			next[k] = make([]float32, e.n)
		}
		if err := e.offspring(*c.Trial, next[k]); err != nil {
			return err
		}
	}
	for k, c := range o.Replace {
		old := e.pop[c.Individual]
		e.pop[c.Individual] = next[k]
		if k == 0 {
			e.scratch = old
		}
	}
	return nil
}

// Ask implements Session: {"generation", "candidates": [[g, i]…], "done"}
// where each candidate names individual i's offspring at generation g
// (g = −1: individual i itself for the initial evaluation, or, i = −1,
// the merge of the population).
func (e *evolveSession) Ask() (any, error) {
	return session.Do(&e.Guard, func() (any, error) {
		cs, err := e.s.Ask()
		if err != nil {
			return nil, err
		}
		cands := make([][]float64, len(cs))
		for k, c := range cs {
			cands[k] = []float64{float64(c.Generation), float64(c.Individual)}
		}
		return map[string]any{"generation": e.s.Generation(), "candidates": cands, "done": e.s.Done()}, nil
	})
}

// Tell implements Session: one score per candidate Ask returns.
func (e *evolveSession) Tell(scores []float64) (any, error) {
	return session.Do(&e.Guard, func() (any, error) { return e.tell(scores) })
}

func (e *evolveSession) tell(scores []float64) (any, error) {
	cs, err := e.s.Ask()
	if err != nil {
		return nil, err
	}
	if len(cs) == 0 {
		return nil, fmt.Errorf("%w: tell without a pending ask (the evolution is finished)", ErrState)
	}
	if len(scores) != len(cs) {
		return nil, invalid("%d scores for %d candidates", len(scores), len(cs))
	}
	for _, v := range scores {
		o, err := e.s.Tell(v)
		if err != nil {
			return nil, err
		}
		if err := e.apply(o); err != nil {
			return nil, err
		}
	}
	if err := e.rc.checkpoint(e.s); err != nil {
		return nil, err
	}
	e.rc.progress(e.progress())
	return e.bestLocked(), nil
}

// bestLocked describes the best so far: "x" names it for Candidate ([−2, i]:
// individual i; [−1, −1]: the merge of the population), "f" is its score,
// "fitness" every individual's.
func (e *evolveSession) bestLocked() map[string]any {
	b, f := e.s.Best()
	out := map[string]any{"generation": e.s.Generation(), "done": e.s.Done(), "x": nil, "f": search.JSONFloat(math.Inf(-1))}
	if !math.IsInf(f, -1) {
		out["f"] = search.JSONFloat(f)
		out["x"] = []float64{-1, -1}
		if b >= 0 {
			out["x"], out["individual"] = []float64{-2, float64(b)}, b
		}
	}
	fits := e.s.Fitness()
	js := make([]search.JSONFloat, len(fits))
	for i, f := range fits {
		js[i] = search.JSONFloat(f)
	}
	out["fitness"] = js
	return out
}

// Best implements Session (see bestLocked).
func (e *evolveSession) Best() (any, error) {
	return session.Do(&e.Guard, func() (any, error) { return e.bestLocked(), nil })
}

// Candidate implements Session for [g, i]: individual i as it is now
// (g = −2 or −1), the merge of the population ([−1, −1], merger), or the
// open trial of parent i in generation g (with a merger, merged).
func (e *evolveSession) Candidate(params []float64) (*TensorSet, error) {
	return holdSet(&e.Guard, func() (*TensorSet, error) { return e.candidate(params) })
}

func (e *evolveSession) candidate(params []float64) (*TensorSet, error) {
	if len(params) != 2 || params[0] != math.Trunc(params[0]) || params[1] != math.Trunc(params[1]) ||
		params[1] < -1 || int(params[1]) >= len(e.pop) || (params[1] == -1 && (params[0] != -1 || e.base == nil)) {
		return nil, invalid("an evolve candidate is [generation, individual], got %v", params)
	}
	switch g, i := int(params[0]), int(params[1]); {
	case i < 0:
		return e.mergedSet(-1, nil)
	case g == -2 || g == -1:
		return e.tensorSet(i, e.pop[i]), nil
	default:
		t, err := e.s.Trial(i)
		if err != nil || g != e.s.Generation() {
			return nil, fmt.Errorf("%w: candidate %v is not pending (ask first; told candidates are gone)", ErrState, params)
		}
		if err := e.offspring(t, e.scratch); err != nil {
			return nil, err
		}
		if e.base != nil {
			return e.mergedSet(i, e.scratch)
		}
		return e.tensorSet(i, e.scratch), nil
	}
}

// tensorSet materialises individual i's model with vec as its evolved
// tensors (rounded to each tensor's dtype); other tensors are i's own.
func (e *evolveSession) tensorSet(i int, vec []float32) *TensorSet {
	return sourceSet(e.srcs[i], nil, e.index, func(t int, out tensor.Vec) error {
		out.Store(vec[e.offsets[t]:e.offsets[t]+out.Len()], 0)
		return nil
	})
}

// mergedSet is the merge, by the spec's merger, of the base and the
// population with vec as individual replace's evolved tensors (replace ≥
// 0): npsfuse.merge's result for the same state dicts — every
// floating-point tensor merged in name order into the base's dtype, the
// others copied from the base.
func (e *evolveSession) mergedSet(replace int, vec []float32) (*TensorSet, error) {
	merged := map[string]int{}
	var mts []merge.Tensor
	for _, name := range slices.Sorted(slices.Values(e.base.Names())) {
		bm, _ := e.base.Meta(name)
		if _, ok := tensors.KernelDType(bm.DType); !ok {
			continue // not floating-point: copied
		}
		bv, err := sourceVec(e.base, name)
		if err != nil {
			return nil, err
		}
		t := merge.Tensor{Name: name, Shape: bm.IntShape(), Base: bv, Models: make([]tensor.Vec, len(e.pop))}
		for j, x := range e.pop {
			if j == replace {
				x = vec
			}
			at, evolved := e.index[name]
			mm, _ := e.srcs[j].Meta(name)
			if _, ok := tensors.KernelDType(mm.DType); !ok && !evolved {
				return nil, invalid("models[%d]: tensor %q is not floating-point, but the base's is", j, name)
			}
			if evolved {
				t.Models[j] = tensor.FromF32(x[e.offsets[at] : e.offsets[at]+bv.Len()])
			} else if t.Models[j], err = sourceVec(e.srcs[j], name); err != nil {
				return nil, err
			}
		}
		merged[name] = len(mts)
		mts = append(mts, t)
	}
	p := e.params
	p.Pool = e.pool
	m, err := merge.NewMerger(e.spec.Merge, p, mts)
	if err != nil {
		return nil, err
	}
	return sourceSet(e.base, nil, merged, m.Tensor), nil
}

// Finish implements Session: the best individual's model (with a merger,
// the merge of the population) is the result.
func (e *evolveSession) Finish() (any, error) {
	return session.Do(&e.Guard, e.finish)
}

func (e *evolveSession) finish() (any, error) {
	best := e.bestLocked()
	if best["x"] == nil {
		return nil, fmt.Errorf("%w: no candidate has been scored successfully yet", ErrState)
	}
	set, err := e.candidate(best["x"].([]float64))
	if err != nil {
		return nil, err
	}
	res, err := writeTensorResult(e.rc, e.spec.Result, set.Metas, set.Fill)
	if err != nil {
		return nil, err
	}
	for _, k := range []string{"f", "generation", "fitness", "individual"} {
		if v, ok := best[k]; ok {
			res[k] = v
		}
	}
	return res, nil
}

// Close implements Session.
func (e *evolveSession) Close() {
	e.Guard.Close(func() {
		e.cancel()
		e.free()
	})
}

// free closes the session's sources and releases its population and its
// memory reservation (those it has: runEvolve frees a session it fails
// to set up).
func (e *evolveSession) free() {
	_ = tensors.CloseAll(append([]tensors.Source{e.base}, e.srcs...)...)
	e.pop, e.scratch = nil, nil
	if e.release != nil {
		e.release()
	}
}
