package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"

	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/search"
)

// Session is an interactive job: the daemon holds the optimizer and its
// population; the client asks for candidates, evaluates them and tells
// their scores. Methods are safe for concurrent use (serialised).
type Session interface {
	// Ask returns the candidates to evaluate (the same ones until Tell).
	Ask() (any, error)
	// Tell records one score per asked candidate (higher is better unless
	// the session minimises; NaN marks a failed evaluation).
	Tell(scores []float64) (any, error)
	// Best is the best candidate so far.
	Best() (any, error)
	// Candidate materialises the tensors of one candidate (its parameter
	// vector from Ask); call Done on the set when finished with it.
	Candidate(params []float64) (*TensorSet, error)
	// Finish writes the session's result (the best candidate's tensors).
	Finish() (any, error)
	// Close releases the session's memory; the job's state is untouched.
	Close()
}

// TensorSet is a lazily computed set of tensors: Fill(i, dst) writes
// tensor i's bytes into dst (len = Metas[i].Bytes()). Done releases it.
type TensorSet struct {
	Metas []tensors.Meta
	Fill  func(i int, dst []byte) error
	Done  func()
}

// searchSpec is an nps_search session (METHODS.md, NPS-Pruning step 4):
// CMA-ES (default) or DE over the M subspace weights w ∈ [lo, hi]^M,
// maximising the client's validation metric of θ₀ + λ·τ_NPS(w).
type searchSpec struct {
	Base  string `json:"base"`
	Model string `json:"model"`
	npsOptions
	Optimizer string               `json:"optimizer,omitempty"` // "cma" (default) or "de"
	Popsize   int                  `json:"popsize,omitempty"`
	Sigma0    float64              `json:"sigma0,omitempty"`
	Lo        *float64             `json:"lo,omitempty"` // default 0
	Hi        *float64             `json:"hi,omitempty"` // default 2
	X0        []float64            `json:"x0,omitempty"` // default all 1
	Strategy  string               `json:"strategy,omitempty"`
	Schedule  *search.ScheduleSpec `json:"schedule,omitempty"`
	Minimize  bool                 `json:"minimize,omitempty"`
	// Generations, when > 0, ends the search: Ask then returns done.
	Generations int        `json:"generations,omitempty"`
	Lam         *float64   `json:"lam,omitempty"`
	Output      string     `json:"output,omitempty"`
	DType       string     `json:"dtype,omitempty"`
	Result      resultSpec `json:"result,omitempty"`
	Cleanup     []string   `json:"cleanup,omitempty"`
}

// Limits of an nps_search spec: popsize bounds the optimizer's
// population (CMA-ES's default for 64 weights is 16, DE's 640);
// generations bounds the planned run.
const (
	MaxPopsize     = 10000
	MaxGenerations = 1_000_000
)

func (s *searchSpec) normalize(e *Env) error {
	p := pruneSpec{Base: s.Base, Model: s.Model, npsOptions: s.npsOptions, Weights: s.X0, Lam: s.Lam,
		Output: s.Output, DType: s.DType, Result: s.Result, Cleanup: s.Cleanup}
	if err := p.normalize(e); err != nil {
		return err
	}
	s.npsOptions, s.X0, s.Lam, s.Output = p.npsOptions, p.Weights, p.Lam, p.Output
	lo, hi := 0.0, 2.0
	if s.Lo == nil {
		s.Lo = &lo
	}
	if s.Hi == nil {
		s.Hi = &hi
	}
	if !(*s.Lo < *s.Hi) || math.IsInf(*s.Lo, 0) || math.IsInf(*s.Hi, 0) {
		return invalid("need finite lo < hi, got [%v, %v]", *s.Lo, *s.Hi)
	}
	for i, x := range s.X0 {
		if x < *s.Lo || x > *s.Hi {
			return invalid("x0[%d] = %v is outside [%v, %v]", i, x, *s.Lo, *s.Hi)
		}
	}
	switch s.Optimizer {
	case "":
		s.Optimizer = "cma"
	case "cma", "de":
	default:
		return invalid("optimizer must be \"cma\" or \"de\", got %q", s.Optimizer)
	}
	if s.Popsize < 0 || s.Generations < 0 {
		return invalid("popsize and generations must be ≥ 0")
	}
	// The optimizers allocate per individual: bound the population before
	// one is built (10**12 would exhaust memory, 2**62 overflow a size).
	if s.Popsize > MaxPopsize {
		return invalid("popsize %d is over the limit of %d (0 = the optimizer's default)", s.Popsize, MaxPopsize)
	}
	if s.Generations > MaxGenerations {
		return invalid("generations %d is over the limit of %d (0 = no limit: finish the session yourself)", s.Generations, MaxGenerations)
	}
	if s.Optimizer == "de" && s.Schedule == nil {
		gens := max(s.Generations, 1)
		sp := search.SpecOf(search.DefaultCosine(gens))
		s.Schedule = &sp
	}
	if s.Schedule != nil {
		if _, err := s.Schedule.Schedule(); err != nil {
			return invalid("schedule: %v", err)
		}
	}
	_, err := s.newOptimizer() // validates the optimizer's options
	return err
}

func (s *searchSpec) bounds() (lo, hi []float64) {
	lo, hi = make([]float64, s.Subspaces), make([]float64, s.Subspaces)
	for i := range lo {
		lo[i], hi[i] = *s.Lo, *s.Hi
	}
	return lo, hi
}

func (s *searchSpec) newOptimizer() (search.Optimizer, error) {
	lo, hi := s.bounds()
	switch s.Optimizer {
	case "cma":
		o, err := search.NewCMAES(search.CMAESOptions{X0: s.X0, Sigma0: s.Sigma0, Lo: lo, Hi: hi,
			Popsize: s.Popsize, Minimize: s.Minimize, Seed: s.Seed})
		if err != nil {
			return nil, invalid("%v", err)
		}
		return o, nil
	default:
		sched, err := s.Schedule.Schedule()
		if err != nil {
			return nil, invalid("schedule: %v", err)
		}
		o, err := search.NewDE(search.DEOptions{Lo: lo, Hi: hi, X0: s.X0, Popsize: s.Popsize,
			Strategy: search.Strategy(s.Strategy), Schedule: sched, Minimize: s.Minimize, Seed: s.Seed})
		if err != nil {
			return nil, invalid("%v", err)
		}
		return o, nil
	}
}

// searchState is a session checkpoint: the optimizer's full state
// (gocore/search State/Restore, RNG included).
type searchState struct {
	Optimizer string             `json:"optimizer"`
	CMA       *search.CMAESState `json:"cma,omitempty"`
	DE        *search.DEState    `json:"de,omitempty"`
}

func checkSearch(e *Env, raw json.RawMessage) (json.RawMessage, error) {
	var s searchSpec
	if err := decodeStrict(raw, &s); err != nil {
		return nil, err
	}
	if err := s.normalize(e); err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// npsSession is a running nps_search.
type npsSession struct {
	mu      sync.Mutex
	rc      *runCtx
	cancel  context.CancelFunc
	spec    searchSpec
	t       *taskSet
	release func()
	opt     search.Optimizer
	closed  bool
}

func runSearch(rc *runCtx) (any, Session, error) {
	var s searchSpec
	if err := decodeStrict(rc.job.Spec, &s); err != nil {
		return nil, nil, err
	}
	t, release, err := newTaskSet(rc, s.Base, s.Model, &s.npsOptions)
	if err != nil {
		return nil, nil, err
	}
	opt, err := s.newOptimizer()
	if err == nil && len(rc.job.Checkpoint) > 0 {
		opt, err = restoreOptimizer(rc.job.Checkpoint, s.Schedule)
	}
	if err != nil {
		release()
		t.close()
		return nil, nil, err
	}
	// The session outlives this worker call: give it its own context.
	ctx, cancel := context.WithCancel(context.Background())
	src := *rc
	src.ctx = ctx
	sess := &npsSession{rc: &src, cancel: cancel, spec: s, t: t, release: release, opt: opt}
	src.progress(sess.progress())
	return nil, sess, nil
}

func restoreOptimizer(raw json.RawMessage, sched *search.ScheduleSpec) (search.Optimizer, error) {
	var st searchState
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("session checkpoint: %w", err)
	}
	switch {
	case st.Optimizer == "cma" && st.CMA != nil:
		return search.RestoreCMAES(*st.CMA)
	case st.Optimizer == "de" && st.DE != nil && sched != nil:
		sc, err := sched.Schedule()
		if err != nil {
			return nil, err
		}
		return search.RestoreDE(*st.DE, sc)
	}
	return nil, fmt.Errorf("session checkpoint names no optimizer")
}

func (n *npsSession) state() searchState {
	switch o := n.opt.(type) {
	case *search.CMAES:
		st := o.State()
		return searchState{Optimizer: "cma", CMA: &st}
	case *search.DE:
		st := o.State()
		return searchState{Optimizer: "de", DE: &st}
	}
	return searchState{}
}

func (n *npsSession) progress() store.Progress {
	_, f := n.opt.Best()
	p := store.Progress{Done: int64(n.opt.Generation()), Total: int64(n.spec.Generations), Unit: "generations"}
	if !math.IsInf(f, 0) {
		p.Message = fmt.Sprintf("best %.6g", f)
	}
	return p
}

func (n *npsSession) usable() error {
	if n.closed {
		return fmt.Errorf("%w: session closed", ErrState)
	}
	return nil
}

// Ask implements Session: {"generation", "candidates": [[w…]…], "done"}.
func (n *npsSession) Ask() (any, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.usable(); err != nil {
		return nil, err
	}
	g := n.opt.Generation()
	if n.spec.Generations > 0 && g >= n.spec.Generations {
		return map[string]any{"generation": g, "candidates": [][]float64{}, "done": true}, nil
	}
	cands := n.opt.Ask()
	// Checkpoint with the pending batch: after a crash the restored
	// optimizer asks the same candidates, so the client's tell still fits.
	if err := n.rc.checkpoint(n.state()); err != nil {
		return nil, err
	}
	return map[string]any{"generation": g, "candidates": cands, "done": false}, nil
}

// Tell implements Session.
func (n *npsSession) Tell(scores []float64) (any, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.usable(); err != nil {
		return nil, err
	}
	if err := n.opt.Tell(scores); err != nil {
		return nil, invalid("%v", err)
	}
	if err := n.rc.checkpoint(n.state()); err != nil {
		return nil, err
	}
	n.rc.progress(n.progress())
	return n.bestLocked(), nil
}

func (n *npsSession) bestLocked() map[string]any {
	x, f := n.opt.Best()
	return map[string]any{"generation": n.opt.Generation(), "x": x, "f": search.JSONFloat(f),
		"done": n.spec.Generations > 0 && n.opt.Generation() >= n.spec.Generations}
}

// Best implements Session: {"generation", "x", "f", "done"}.
func (n *npsSession) Best() (any, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.usable(); err != nil {
		return nil, err
	}
	return n.bestLocked(), nil
}

// Candidate implements Session: θ₀ + λ·τ_NPS(w) (or τ_NPS) for weights w.
// The session stays locked until Done (Build's buffers are shared).
func (n *npsSession) Candidate(w []float64) (*TensorSet, error) {
	n.mu.Lock()
	ok := false
	defer func() {
		if !ok {
			n.mu.Unlock()
		}
	}()
	if err := n.usable(); err != nil {
		return nil, err
	}
	if len(w) != n.spec.Subspaces {
		return nil, invalid("candidate has %d weights, the session searches %d", len(w), n.spec.Subspaces)
	}
	for i, x := range w {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, invalid("candidate weight %d is %v", i, x)
		}
	}
	if _, err := n.t.build(w, &n.spec.npsOptions); err != nil {
		return nil, err
	}
	metas, fill, err := n.t.outputSet(n.spec.Output, *n.spec.Lam, n.spec.DType)
	if err != nil {
		return nil, err
	}
	ok = true
	var once sync.Once
	return &TensorSet{Metas: metas, Fill: fill, Done: func() { once.Do(n.mu.Unlock) }}, nil
}

// Finish implements Session: the best weights' tensors become the result.
func (n *npsSession) Finish() (any, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.usable(); err != nil {
		return nil, err
	}
	x, f := n.opt.Best()
	note := ""
	if x == nil {
		x, note = n.spec.X0, "no candidate was evaluated successfully: the result uses x0"
	}
	kept, err := n.t.build(x, &n.spec.npsOptions)
	if err != nil {
		return nil, err
	}
	metas, fill, err := n.t.outputSet(n.spec.Output, *n.spec.Lam, n.spec.DType)
	if err != nil {
		return nil, err
	}
	res, err := writeTensorResult(n.rc, n.spec.Result, metas, fill)
	if err != nil {
		return nil, err
	}
	res["best_x"], res["best_f"], res["generation"] = x, search.JSONFloat(f), n.opt.Generation()
	res["kept"], res["numel"] = kept, n.t.numel()
	if note != "" {
		res["notes"] = []string{note}
	}
	return res, nil
}

// Close implements Session.
func (n *npsSession) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	n.cancel()
	n.t.close()
	n.release()
}
