package jobs

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/nps"
	"github.com/npsfuse/npsfuse/gocore/search"
	"github.com/npsfuse/npsfuse/gocore/session"
	"github.com/npsfuse/npsfuse/gocore/tensor"
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

// sourceSet is the TensorSet of metas (nil: src's tensors, as src lists
// them): a tensor that computed maps to an index i is put into its kernel
// view (its meta's dtype) by put(i, out), any other copied from src.
func sourceSet(src tensors.Source, metas []tensors.Meta, computed map[string]int, put func(i int, out tensor.Vec) error) *TensorSet {
	if metas == nil {
		metas = sourceMetas(src)
	}
	return &TensorSet{Metas: metas, Fill: func(k int, dst []byte) error {
		i, ok := computed[metas[k].Name]
		if !ok {
			b, err := src.Bytes(metas[k].Name)
			copy(dst, b)
			return err
		}
		out, err := tensor.FromBytes(dst, mustKernel(metas[k]))
		if err != nil {
			return err
		}
		return put(i, out)
	}}
}

// sourceMetas lists src's tensors, in its order.
func sourceMetas(src tensors.Source) []tensors.Meta {
	names := src.Names()
	metas := make([]tensors.Meta, len(names))
	for k, n := range names {
		metas[k], _ = src.Meta(n)
	}
	return metas
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
	// An x0 outside [lo, hi] is scored as given and clipped into the box for
	// the optimizer (nps.Session), as npsfuse.nps.Search does.
	if s.Optimizer == "" {
		s.Optimizer = "cma" // others are checked by the engine's factory (search.New)
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
	_, err := s.session() // validates the optimizer's options
	return err
}

// session starts the engine's search session (gocore/nps.Session, the one
// npsfuse.nps.Search drives): the start point x0 first, then one optimizer
// generation per ask. Generations 0 plans none: the client finishes.
func (s *searchSpec) session() (*nps.Session, error) {
	lo, hi := make([]float64, s.Subspaces), make([]float64, s.Subspaces)
	for i := range lo {
		lo[i], hi[i] = *s.Lo, *s.Hi
	}
	gens := s.Generations
	if gens == 0 {
		gens = -1
	}
	sess, err := nps.NewSession(nps.SessionConfig{Config: search.Config{Optimizer: s.Optimizer, Sigma0: s.Sigma0,
		Lo: lo, Hi: hi, Popsize: s.Popsize, Seed: s.Seed, Strategy: s.Strategy, Schedule: s.Schedule,
		Minimize: s.Minimize}, Start: s.X0, Generations: gens})
	if err != nil {
		return nil, invalid("%v", err)
	}
	return sess, nil
}

// npsSession is a running nps_search.
type npsSession struct {
	session.Guard
	rc     *runCtx
	cancel context.CancelFunc
	spec   searchSpec
	t      *taskSet
	s      *nps.Session
}

// holdSet builds a TensorSet that borrows a session's buffers: the
// session stays locked (g.Hold) until the set's Done.
func holdSet(g *session.Guard, build func() (*TensorSet, error)) (*TensorSet, error) {
	done, err := g.Hold()
	if err != nil {
		return nil, err
	}
	set, err := build()
	if err != nil {
		done()
		return nil, err
	}
	set.Done = done
	return set, nil
}

// errClosed is a daemon session's closed error (session.Guard.Closed).
var errClosed = fmt.Errorf("%w: session closed", ErrState)

func runSearch(rc *runCtx, s *searchSpec) (any, Session, error) {
	t, err := newTaskSet(rc, s.Base, s.Model, &s.npsOptions)
	if err != nil {
		return nil, nil, err
	}
	sess, err := s.session()
	if err == nil && len(rc.job.Checkpoint) > 0 {
		if sess, err = nps.RestoreSession(rc.job.Checkpoint); err != nil {
			err = fmt.Errorf("session checkpoint (one written before the engine's search session cannot be resumed): %w", err)
		}
	}
	if err != nil {
		t.close()
		return nil, nil, err
	}
	src, cancel := rc.detach()
	ns := &npsSession{Guard: session.Guard{Closed: errClosed}, rc: src, cancel: cancel, spec: *s, t: t, s: sess}
	src.progress(ns.progress())
	return nil, ns, nil
}

func (n *npsSession) progress() store.Progress {
	_, f := n.s.Best()
	p := store.Progress{Done: int64(n.s.Generation()), Total: int64(n.spec.Generations), Unit: "generations"}
	if !math.IsInf(f, 0) {
		p.Message = fmt.Sprintf("best %.6g", f)
	}
	return p
}

// Ask implements Session: {"generation", "candidates": [[w…]…], "done"}.
// The first ask is the start point x0 alone (all weights 1: magnitude
// top-k), then one optimizer generation per ask.
func (n *npsSession) Ask() (any, error) {
	return session.Do(&n.Guard, func() (any, error) {
		g := n.s.Generation()
		if n.s.Done() {
			return map[string]any{"generation": g, "candidates": [][]float64{}, "done": true}, nil
		}
		cands := n.s.Ask()
		// Checkpoint with the pending batch: after a crash the restored
		// session asks the same candidates, so the client's tell still fits.
		if err := n.rc.checkpoint(n.s); err != nil {
			return nil, err
		}
		return map[string]any{"generation": g, "candidates": cands, "done": false}, nil
	})
}

// Tell implements Session.
func (n *npsSession) Tell(scores []float64) (any, error) {
	return session.Do(&n.Guard, func() (any, error) {
		if err := n.s.Tell(scores); err != nil {
			if errors.Is(err, nps.ErrNotAsked) {
				return nil, fmt.Errorf("%w: %v", ErrState, err)
			}
			return nil, invalid("%v", err)
		}
		if err := n.rc.checkpoint(n.s); err != nil {
			return nil, err
		}
		n.rc.progress(n.progress())
		return n.bestLocked(false), nil
	})
}

// bestLocked is {"generation", "x", "f", "done"}; with all, also the start
// point's score, the evaluation counts and the history.
func (n *npsSession) bestLocked(all bool) map[string]any {
	s := n.s.Summary()
	out := map[string]any{"generation": s.Generation, "x": s.BestX, "f": s.BestF, "done": s.Done}
	if all {
		out["start_f"], out["evaluations"], out["failures"], out["history"] = s.StartF, s.Evals, s.Failures, s.History
	}
	return out
}

// Best implements Session: {"generation", "x", "f", "done", "start_f",
// "evaluations", "failures", "history"}.
func (n *npsSession) Best() (any, error) {
	return session.Do(&n.Guard, func() (any, error) { return n.bestLocked(true), nil })
}

// Candidate implements Session: θ₀ + λ·τ_NPS(w) (or τ_NPS) for weights w.
// The session stays locked until Done (Build's buffers are shared).
func (n *npsSession) Candidate(w []float64) (*TensorSet, error) {
	return holdSet(&n.Guard, func() (*TensorSet, error) { return n.candidate(w) })
}

func (n *npsSession) candidate(w []float64) (*TensorSet, error) {
	for i, x := range w { // the weights' count is Build's check
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, invalid("candidate weight %d is %v", i, x)
		}
	}
	_, set, err := n.t.output(w, &n.spec.npsOptions, n.spec.Output, *n.spec.Lam, n.spec.DType)
	return set, err
}

// Finish implements Session: the best weights' tensors become the result.
func (n *npsSession) Finish() (any, error) {
	return session.Do(&n.Guard, n.finish)
}

func (n *npsSession) finish() (any, error) {
	s := n.s.Summary()
	x, note := s.BestX, ""
	if x == nil {
		x, note = n.spec.X0, "no candidate was evaluated successfully: the result uses x0"
	}
	kept, set, err := n.t.output(x, &n.spec.npsOptions, n.spec.Output, *n.spec.Lam, n.spec.DType)
	if err != nil {
		return nil, err
	}
	res, err := writeTensorResult(n.rc, n.spec.Result, set.Metas, set.Fill)
	if err != nil {
		return nil, err
	}
	res["generation"], res["done"], res["best_x"], res["best_f"] = s.Generation, s.Done, s.BestX, s.BestF
	res["start_f"], res["evaluations"], res["failures"], res["history"] = s.StartF, s.Evals, s.Failures, s.History
	res["kept"], res["numel"] = kept, n.t.numel()
	if note != "" {
		res["notes"] = []string{note}
	}
	return res, nil
}

// Close implements Session.
func (n *npsSession) Close() {
	n.Guard.Close(func() {
		n.cancel()
		n.t.close()
	})
}
