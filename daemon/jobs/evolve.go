package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"sync"

	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/evolve"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// evolveSpec is an evolve session: weight-space evolution of a population
// of fine-tuned models (METHODS.md, "Search and evolution"): Evolver's
// operator (Du, Li, Liu et al., 2024) or DE/CADE's (Jiang, Du et al., 2024),
// planned and computed by gocore/evolve. The daemon holds the population;
// the client scores candidates on its dev set.
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
	// Exclude lists name patterns of tensors not evolved (task heads):
	// every individual keeps its own.
	Exclude []string   `json:"exclude,omitempty"`
	Result  resultSpec `json:"result,omitempty"`
	Cleanup []string   `json:"cleanup,omitempty"`
}

func (s *evolveSpec) config(n int, segments []int) (evolve.Config, error) {
	c := evolve.Config{Strategy: search.Strategy(s.Strategy), Schedule: *s.Schedule,
		Granularity: evolve.Granularity(s.Granularity), BlockSize: s.BlockSize, ForceIndex: s.ForceIndex,
		RandomRef: s.RandomRef, Seed: s.Seed, Generations: s.Generations}
	if c.Granularity == evolve.Tensor {
		c.Segments = segments
	}
	if err := c.Validate(n); err != nil {
		return c, invalid("%v", err)
	}
	return c, nil
}

func checkEvolve(e *Env, raw json.RawMessage) (json.RawMessage, error) {
	var s evolveSpec
	if err := decodeStrict(raw, &s); err != nil {
		return nil, err
	}
	if s.Strategy == "" {
		s.Strategy = string(evolve.StrategyEvolver)
	}
	if s.Schedule == nil {
		s.Schedule = &search.ScheduleSpec{Kind: "constant", F: 0.5, CR: 0.5}
	}
	if s.Generations == 0 {
		s.Generations = 15
	}
	if s.Granularity == "" {
		s.Granularity = string(evolve.Element)
	}
	if _, err := s.config(-1, nil); err != nil {
		return nil, err
	}
	if len(s.Models) < 2 {
		return nil, invalid("models must list the initial population (at least 2 fine-tuned models)")
	}
	for i, m := range s.Models {
		if _, err := e.Resolve(m, fmt.Sprintf("models[%d]", i)); err != nil {
			return nil, err
		}
	}
	for _, p := range s.Exclude {
		if _, err := filepath.Match(p, ""); err != nil {
			return nil, invalid("exclude: bad pattern %q: %v", p, err)
		}
	}
	if err := s.Result.check(e); err != nil {
		return nil, err
	}
	if err := e.CheckCleanup(s.Cleanup); err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// evolveTrial is an asked candidate: individual i's offspring at plan
// generation g, or (g = −1) individual i itself for its first evaluation.
type evolveTrial struct {
	g, i  int
	trial evolve.Trial
}

// evolveSession is a running evolve session.
type evolveSession struct {
	mu      sync.Mutex
	rc      *runCtx
	cancel  context.CancelFunc
	spec    evolveSpec
	cfg     evolve.Config
	srcs    []tensors.Source
	names   []string // evolved tensors, in the flattened order
	metas   []tensors.Meta
	offsets []int // start of each evolved tensor in the flat buffer
	n       int
	pop     [][]float32
	fit     []float64 // NaN until evaluated
	scratch []float32
	gen     int // 0: initial evaluation; g ≥ 1: plan generation g−1
	order   []int
	pos     int
	pending []evolveTrial
	history [][]float64 // every tell's scores, replayed after a restart
	release func()
	closed  bool
}

// evolveState is the session checkpoint: the told scores (the population
// is rebuilt by replaying them; every operator is deterministic).
type evolveState struct {
	History [][]float64 `json:"history"`
}

func runEvolve(rc *runCtx) (any, Session, error) {
	var s evolveSpec
	if err := decodeStrict(rc.job.Spec, &s); err != nil {
		return nil, nil, err
	}
	es := &evolveSession{spec: s}
	ok := false
	defer func() {
		if !ok {
			_ = tensors.CloseAll(es.srcs...)
			if es.release != nil {
				es.release()
			}
		}
	}()
	for i, ref := range s.Models {
		p, err := rc.env.Resolve(ref, fmt.Sprintf("models[%d]", i))
		if err != nil {
			return nil, nil, err
		}
		src, err := rc.env.openSource(p)
		if err != nil {
			return nil, nil, err
		}
		es.srcs = append(es.srcs, src)
	}
	if err := es.layout(); err != nil {
		return nil, nil, err
	}
	np := len(es.srcs)
	need := int64(es.n) * 4 * int64(np+1)
	if s.Strategy != string(evolve.StrategyEvolver) {
		need += int64(es.n) * 4 * int64(np) // accepted offspring of a generation
	}
	var err error
	if es.release, err = rc.reserve(need, "the population"); err != nil {
		return nil, nil, err
	}
	segments := make([]int, 0, len(es.offsets)+1)
	segments = append(segments, es.offsets...)
	segments = append(segments, es.n)
	if es.cfg, err = s.config(es.n, segments); err != nil {
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
	es.fit = make([]float64, np)
	for i := range es.fit {
		es.fit[i] = math.NaN()
	}
	es.scratch = make([]float32, es.n)
	if len(rc.job.Checkpoint) > 0 {
		var st evolveState
		if err := json.Unmarshal(rc.job.Checkpoint, &st); err != nil {
			return nil, nil, fmt.Errorf("session checkpoint: %w", err)
		}
		for g, scores := range st.History {
			if _, err := es.askLocked(); err != nil {
				return nil, nil, fmt.Errorf("replaying tell %d: %w", g, err)
			}
			if err := es.tellLocked(scores); err != nil {
				return nil, nil, fmt.Errorf("replaying tell %d: %w", g, err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	src := *rc
	src.ctx = ctx
	es.rc, es.cancel = &src, cancel
	src.progress(es.progress())
	ok = true
	return nil, es, nil
}

func firstNaN(x []float32) int {
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return i
		}
	}
	return -1
}

// layout picks the evolved tensors (floating-point, not excluded, in model
// 0's order) and checks every individual has them with the same shapes.
func (e *evolveSession) layout() error {
	first := e.srcs[0]
	for _, name := range first.Names() {
		m, _ := first.Meta(name)
		if _, ok := tensors.KernelDType(m.DType); !ok || excluded(e.spec.Exclude, name) {
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
		e.names = append(e.names, name)
		e.metas = append(e.metas, m)
		e.offsets = append(e.offsets, e.n)
		e.n += int(m.Numel())
	}
	if e.n == 0 {
		return invalid("no floating-point tensors to evolve")
	}
	return nil
}

// excluded reports whether a tensor is kept out of evolution (filepath.Match
// patterns; "*x*" also matches names containing x).
func excluded(patterns []string, name string) bool { return matchAny(patterns, name) }

func (e *evolveSession) done() bool { return e.gen > e.spec.Generations }

func (e *evolveSession) progress() store.Progress {
	p := store.Progress{Done: int64(max(e.gen-1, 0)), Total: int64(e.spec.Generations), Unit: "generations"}
	if b := best(e.fit); b >= 0 {
		p.Message = fmt.Sprintf("best %.6g (individual %d)", e.fit[b], b)
	}
	return p
}

// best is the highest-fitness evaluated individual, or −1.
func best(fit []float64) int {
	b := -1
	for i, f := range fit {
		if !math.IsNaN(f) && !math.IsInf(f, 0) && (b < 0 || f > fit[b]) {
			b = i
		}
	}
	return b
}

// askLocked plans the pending candidates (once per tell).
func (e *evolveSession) askLocked() ([]evolveTrial, error) {
	if e.pending != nil || e.done() {
		return e.pending, nil
	}
	np := len(e.pop)
	if e.gen == 0 {
		for i := 0; i < np; i++ {
			e.pending = append(e.pending, evolveTrial{g: -1, i: i})
		}
		return e.pending, nil
	}
	g := e.gen - 1
	if e.cfg.Strategy == evolve.StrategyEvolver {
		if e.order == nil {
			e.order, e.pos = evolve.Order(e.cfg.Seed, g, np, true), 0
		}
		i := e.order[e.pos]
		t, err := e.cfg.Plan(g, i, e.fit, e.n)
		if err != nil {
			return nil, err
		}
		e.pending = []evolveTrial{{g: g, i: i, trial: t}}
		return e.pending, nil
	}
	for i := 0; i < np; i++ {
		t, err := e.cfg.Plan(g, i, e.fit, e.n)
		if err != nil {
			return nil, err
		}
		e.pending = append(e.pending, evolveTrial{g: g, i: i, trial: t})
	}
	return e.pending, nil
}

// offspring computes a pending trial's vector into dst.
func (e *evolveSession) offspring(t evolveTrial, dst []float32) error {
	if t.g < 0 {
		copy(dst, e.pop[t.i])
		return nil
	}
	pop := make([]tensor.Vec, len(e.pop))
	for k, x := range e.pop {
		pop[k] = tensor.FromF32(x)
	}
	_, err := evolve.Offspring(tensor.FromF32(dst), pop, &e.cfg, &t.trial)
	return err
}

// tellLocked applies the scores of the pending candidates: initial
// fitness, or selection (an offspring replaces its parent only when its
// score is strictly higher — Evolver's rule and CADE's).
func (e *evolveSession) tellLocked(scores []float64) error {
	if e.pending == nil {
		return fmt.Errorf("%w: tell without a pending ask", ErrState)
	}
	if len(scores) != len(e.pending) {
		return invalid("%d scores for %d candidates", len(scores), len(e.pending))
	}
	better := func(s, f float64) bool {
		return !math.IsNaN(s) && !math.IsInf(s, 0) && (math.IsNaN(f) || math.IsInf(f, 0) || s > f)
	}
	switch {
	case e.gen == 0:
		copy(e.fit, scores)
		e.gen = 1
	case e.cfg.Strategy == evolve.StrategyEvolver:
		t := e.pending[0]
		if better(scores[0], e.fit[t.i]) {
			if err := e.offspring(t, e.scratch); err != nil {
				return err
			}
			copy(e.pop[t.i], e.scratch)
			e.fit[t.i] = scores[0]
		}
		e.pos++
		if e.pos == len(e.order) {
			e.gen, e.order, e.pos = e.gen+1, nil, 0
		}
	default:
		accepted := map[int][]float32{}
		for k, t := range e.pending {
			if better(scores[k], e.fit[t.i]) {
				x := make([]float32, e.n)
				if err := e.offspring(t, x); err != nil {
					return err
				}
				accepted[t.i] = x
			}
		}
		for k, t := range e.pending {
			if x, ok := accepted[t.i]; ok {
				e.pop[t.i], e.fit[t.i] = x, scores[k]
			}
		}
		e.gen++
	}
	e.pending = nil
	e.history = append(e.history, append([]float64(nil), scores...))
	return nil
}

func (e *evolveSession) usable() error {
	if e.closed {
		return fmt.Errorf("%w: session closed", ErrState)
	}
	return nil
}

// Ask implements Session: {"generation", "candidates": [[g, i]…], "done"}
// where each candidate names individual i's offspring at plan generation g
// (g = −1: individual i itself, for its first evaluation).
func (e *evolveSession) Ask() (any, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usable(); err != nil {
		return nil, err
	}
	ts, err := e.askLocked()
	if err != nil {
		return nil, err
	}
	cands := make([][]float64, len(ts))
	for k, t := range ts {
		cands[k] = []float64{float64(t.g), float64(t.i)}
	}
	return map[string]any{"generation": max(e.gen-1, 0), "candidates": cands, "done": e.done()}, nil
}

// Tell implements Session.
func (e *evolveSession) Tell(scores []float64) (any, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usable(); err != nil {
		return nil, err
	}
	if err := e.tellLocked(scores); err != nil {
		return nil, err
	}
	if err := e.rc.checkpoint(evolveState{History: e.history}); err != nil {
		return nil, err
	}
	e.rc.progress(e.progress())
	return e.bestLocked(), nil
}

func (e *evolveSession) bestLocked() map[string]any {
	b := best(e.fit)
	out := map[string]any{"generation": max(e.gen-1, 0), "done": e.done(), "x": nil, "f": search.JSONFloat(math.Inf(-1))}
	if b >= 0 {
		out["x"], out["f"] = []float64{-2, float64(b)}, search.JSONFloat(e.fit[b])
		out["individual"] = b
	}
	fits := make([]search.JSONFloat, len(e.fit))
	for i, f := range e.fit {
		fits[i] = search.JSONFloat(f)
	}
	out["fitness"] = fits
	return out
}

// Best implements Session: the best individual ("x" = [−2, i] names it
// for Candidate), its fitness and every individual's.
func (e *evolveSession) Best() (any, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usable(); err != nil {
		return nil, err
	}
	return e.bestLocked(), nil
}

// Candidate implements Session for [g, i]: a pending candidate, or (g = −2)
// the current individual i.
func (e *evolveSession) Candidate(params []float64) (*TensorSet, error) {
	e.mu.Lock()
	ok := false
	defer func() {
		if !ok {
			e.mu.Unlock()
		}
	}()
	if err := e.usable(); err != nil {
		return nil, err
	}
	if len(params) != 2 || params[1] != math.Trunc(params[1]) || params[1] < 0 || int(params[1]) >= len(e.pop) {
		return nil, invalid("an evolve candidate is [generation, individual], got %v", params)
	}
	g, i := int(params[0]), int(params[1])
	var vec []float32
	switch {
	case g == -2:
		vec = e.pop[i]
	default:
		var t *evolveTrial
		for k := range e.pending {
			if e.pending[k].g == g && e.pending[k].i == i {
				t = &e.pending[k]
			}
		}
		if t == nil {
			return nil, fmt.Errorf("%w: candidate %v is not pending (ask first; told candidates are gone)", ErrState, params)
		}
		if err := e.offspring(*t, e.scratch); err != nil {
			return nil, err
		}
		vec = e.scratch
	}
	set := e.tensorSet(i, vec)
	ok = true
	var once sync.Once
	set.Done = func() { once.Do(e.mu.Unlock) }
	return set, nil
}

// tensorSet materialises individual i's model with vec as its evolved
// tensors (rounded to each tensor's dtype); other tensors are i's own.
func (e *evolveSession) tensorSet(i int, vec []float32) *TensorSet {
	src := e.srcs[i]
	idx := map[string]int{}
	for k, n := range e.names {
		idx[n] = k
	}
	names := src.Names()
	metas := make([]tensors.Meta, len(names))
	for k, n := range names {
		metas[k], _ = src.Meta(n)
	}
	return &TensorSet{Metas: metas, Fill: func(k int, dst []byte) error {
		t, ok := idx[names[k]]
		if !ok {
			b, err := src.Bytes(names[k])
			if err != nil {
				return err
			}
			copy(dst, b)
			return nil
		}
		out, err := tensor.FromBytes(dst, mustKernel(metas[k]))
		if err != nil {
			return err
		}
		out.Store(vec[e.offsets[t]:e.offsets[t]+out.Len()], 0)
		return nil
	}}
}

// Finish implements Session: the best individual's model is the result.
func (e *evolveSession) Finish() (any, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.usable(); err != nil {
		return nil, err
	}
	b := best(e.fit)
	if b < 0 {
		return nil, fmt.Errorf("%w: no individual has been evaluated yet", ErrState)
	}
	set := e.tensorSet(b, e.pop[b])
	res, err := writeTensorResult(e.rc, e.spec.Result, set.Metas, set.Fill)
	if err != nil {
		return nil, err
	}
	res["individual"], res["f"], res["generation"] = b, search.JSONFloat(e.fit[b]), max(e.gen-1, 0)
	fits := make([]search.JSONFloat, len(e.fit))
	for i, f := range e.fit {
		fits[i] = search.JSONFloat(f)
	}
	res["fitness"] = fits
	return res, nil
}

// Close implements Session.
func (e *evolveSession) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	e.cancel()
	_ = tensors.CloseAll(e.srcs...)
	e.pop, e.scratch = nil, nil
	e.release()
}
