package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// MaxAttempts is how many times a job interrupted by a crash is resumed
// before it is marked failed (a job that crashes the daemon must not do
// so forever).
const MaxAttempts = 3

var (
	errDrain     = errors.New("daemon shutting down")
	errCancelled = errors.New("cancelled by a client")
)

// kind is one job type.
type kind struct {
	// session kinds stay running after run returns a Session, until the
	// client finishes or cancels them.
	session bool
	// check validates and normalises a spec at submit time (cheap: no
	// tensor data is read).
	check func(e *Env, spec json.RawMessage) (json.RawMessage, error)
	// run executes the job.
	run func(rc *runCtx) (result any, s Session, err error)
}

// kinds is the job-type registry.
var kinds = map[string]*kind{
	"merge":      specKind(false, (*mergeSpec).check, runMerge),
	"nps_prune":  specKind(false, (*pruneSpec).normalize, runPrune),
	"compress":   specKind(false, (*compressSpec).check, runCompress),
	"nps_search": specKind(true, (*searchSpec).normalize, runSearch),
	"evolve":     specKind(true, (*evolveSpec).check, runEvolve),
}

// specKind is the kind whose specs are S: check decodes a spec strictly
// (decodeStrict), lets norm validate and complete it, and stores it
// encoded again; run decodes the stored spec for run.
func specKind[S any](session bool, norm func(*S, *Env) error, run func(*runCtx, *S) (any, Session, error)) *kind {
	return &kind{session: session,
		check: func(e *Env, raw json.RawMessage) (json.RawMessage, error) {
			var s S
			if err := decodeStrict(raw, &s); err != nil {
				return nil, err
			}
			if err := norm(&s, e); err != nil {
				return nil, err
			}
			return json.Marshal(s)
		},
		run: func(rc *runCtx) (any, Session, error) {
			var s S
			if err := decodeStrict(rc.job.Spec, &s); err != nil {
				return nil, nil, err
			}
			return run(rc, &s)
		}}
}

// Types lists the job types, sorted.
func Types() []string { return slices.Sorted(maps.Keys(kinds)) }

// runCtx is what a running job sees.
type runCtx struct {
	ctx context.Context
	job *store.Job
	env *Env
	r   *Runner
	log *slog.Logger
}

// detach is rc for a session, which outlives the worker call that starts
// it: a copy with its own context, which cancel ends.
func (rc *runCtx) detach() (*runCtx, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	src := *rc
	src.ctx = ctx
	return &src, cancel
}

// progress publishes how far the job has come (memory only; cheap).
func (rc *runCtx) progress(p store.Progress) { rc.r.setProgress(rc.job.ID, p) }

// reserve takes n bytes of the memory budget (see Budget.Reserve).
func (rc *runCtx) reserve(n int64, what string) (func(), error) {
	return rc.r.budget.Reserve(rc.ctx, n, what)
}

// checkpoint stores the state an interrupted job resumes from.
func (rc *runCtx) checkpoint(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = rc.r.st.Update(rc.job.ID, func(j *store.Job) error {
		j.Checkpoint = raw
		return nil
	})
	return err
}

// active is a job a worker is running (or a session in setup).
type active struct {
	cancel   context.CancelCauseFunc
	progress store.Progress
}

// sessionEntry is a ready interactive session.
type sessionEntry struct {
	s        Session
	progress store.Progress
	used     time.Time // last ask/tell/state through Session (for SessionIdle)
}

// Runner owns the queue, the workers and the live sessions. Every
// goroutine it starts stops in Drain.
type Runner struct {
	env     *Env
	st      *store.Store
	budget  *Budget
	workers int
	log     *slog.Logger

	mu       sync.Mutex
	cond     *sync.Cond
	queue    []uint64
	active   map[uint64]*active
	sessions map[uint64]*sessionEntry
	watch    map[uint64]chan struct{}
	draining bool
	drainCh  chan struct{}
	wg       sync.WaitGroup
}

// NewRunner prepares a runner; call Recover, then Start.
func NewRunner(env *Env, st *store.Store, budget *Budget, workers int) *Runner {
	r := &Runner{env: env, st: st, budget: budget, workers: workers, log: env.Log,
		active: map[uint64]*active{}, sessions: map[uint64]*sessionEntry{}, watch: map[uint64]chan struct{}{},
		drainCh: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// Recover puts every job a previous run left queued or running back in
// the queue, oldest first. A job that was running was interrupted (crash
// or kill): it resumes from its checkpoint, or is marked failed after
// MaxAttempts interruptions.
func (r *Runner) Recover() error {
	left, err := r.st.List(store.Filter{States: []store.State{store.Queued, store.Running}})
	if err != nil {
		return err
	}
	for _, j := range left {
		if j.State == store.Running {
			var note string
			upd, err := r.st.Update(j.ID, func(j *store.Job) error {
				if j.Attempts >= MaxAttempts {
					j.State = store.Failed
					j.Error = fmt.Sprintf("interrupted %d times while running (the daemon stopped or crashed); giving up", j.Attempts)
					return nil
				}
				j.State = store.Queued
				note = fmt.Sprintf("interrupted while running (attempt %d) by a daemon restart; resumed", j.Attempts)
				if k := kinds[j.Type]; len(j.Checkpoint) > 0 && k != nil && k.session {
					note += " from its last checkpoint"
				}
				j.Notes = append(j.Notes, note)
				return nil
			})
			if err != nil {
				return err
			}
			if upd.State == store.Failed {
				r.log.Warn("job failed after repeated interruptions", "job", j.ID, "type", j.Type, "attempts", j.Attempts)
				r.env.Cleanup(cleanupOf(upd.Spec))
				continue
			}
			r.log.Info("job resumes after restart", "job", j.ID, "type", j.Type, "attempt", j.Attempts+1)
		}
		r.queue = append(r.queue, j.ID)
	}
	return nil
}

// Start launches the workers.
func (r *Runner) Start() {
	for i := 0; i < r.workers; i++ {
		r.wg.Add(1)
		go r.worker()
	}
}

// QueueDepth is how many jobs wait for a worker.
func (r *Runner) QueueDepth() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

// Running is how many batch jobs run now and how many sessions are open.
func (r *Runner) Running() (jobs, sessions int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.active), len(r.sessions)
}

// Draining reports whether Drain was called.
func (r *Runner) Draining() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.draining
}

func (r *Runner) enqueue(ids ...uint64) {
	r.mu.Lock()
	r.queue = append(r.queue, ids...)
	if len(ids) == 1 {
		r.cond.Signal()
	} else if len(ids) > 1 {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

func (r *Runner) next() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.queue) == 0 && !r.draining {
		r.cond.Wait()
	}
	if r.draining {
		return 0, false
	}
	id := r.queue[0]
	r.queue = r.queue[1:]
	return id, true
}

func (r *Runner) worker() {
	defer r.wg.Done()
	for {
		id, ok := r.next()
		if !ok {
			return
		}
		r.execute(id)
	}
}

// notify wakes everyone watching job id.
func (r *Runner) notify(id uint64) {
	r.mu.Lock()
	r.notifyLocked(id)
	r.mu.Unlock()
}

func (r *Runner) notifyLocked(id uint64) {
	if ch, ok := r.watch[id]; ok {
		close(ch)
		delete(r.watch, id)
	}
}

// changed returns a channel closed at job id's next change.
func (r *Runner) changed(id uint64) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch, ok := r.watch[id]
	if !ok {
		ch = make(chan struct{})
		r.watch[id] = ch
	}
	return ch
}

func (r *Runner) setProgress(id uint64, p store.Progress) {
	r.mu.Lock()
	if a, ok := r.active[id]; ok {
		a.progress = p
	} else if s, ok := r.sessions[id]; ok {
		s.progress = p
	}
	r.notifyLocked(id)
	r.mu.Unlock()
}

// execute runs one queued job on the calling worker.
func (r *Runner) execute(id uint64) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	r.mu.Lock()
	r.active[id] = &active{cancel: cancel}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.active, id)
		r.notifyLocked(id)
		r.mu.Unlock()
	}()
	skip := errors.New("skip")
	j, err := r.st.Update(id, func(j *store.Job) error {
		if j.State != store.Queued {
			return skip
		}
		if j.CancelRequested {
			j.State, j.Error = store.Cancelled, errCancelled.Error()
			return nil
		}
		j.State = store.Running
		j.Attempts++
		return nil
	})
	if err != nil {
		if !errors.Is(err, skip) {
			r.log.Error("cannot start job", "job", id, "error", err)
		}
		return
	}
	r.notify(id)
	if j.State != store.Running {
		r.env.Cleanup(cleanupOf(j.Spec))
		return
	}
	k := kinds[j.Type]
	log := r.log.With("job", id, "type", j.Type)
	log.Info("job started", "attempt", j.Attempts)
	start := time.Now()
	res, sess, runErr := r.protect(k, &runCtx{ctx: ctx, job: j, env: r.env, r: r, log: log})
	secs := time.Since(start).Seconds()
	if r.env.KernelSeconds != nil {
		r.env.KernelSeconds(j.Type, secs)
	}
	cause := context.Cause(ctx)
	switch {
	case runErr == nil && sess != nil:
		r.mu.Lock()
		if r.draining || cause != nil {
			r.mu.Unlock()
			sess.Close()
			if cause == nil {
				cause = errDrain
			}
			r.settle(id, log, nil, nil, cause, secs)
			return
		}
		r.sessions[id] = &sessionEntry{s: sess, progress: store.Progress{Message: "ready"}, used: time.Now()}
		r.mu.Unlock()
		_, err := r.st.Update(id, func(j *store.Job) error {
			j.Attempts = 0 // a ready session survives any number of restarts
			j.Progress = store.Progress{Message: "ready"}
			return nil
		})
		if err != nil {
			log.Error("cannot record session", "error", err)
		}
		log.Info("session ready", "seconds", secs)
	default:
		r.settle(id, log, res, runErr, cause, secs)
	}
}

// protect runs a job, turning a panic into an error.
func (r *Runner) protect(k *kind, rc *runCtx) (res any, s Session, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("internal error (Go panic): %v\n%s", p, debug.Stack())
		}
	}()
	// A mapped input truncated under the job fails the job, not the daemon.
	err = parallel.Guard(func() error {
		res, s, err = k.run(rc)
		return err
	})
	return res, s, err
}

// settle records how a batch job (or a session's setup or finish) ended.
func (r *Runner) settle(id uint64, log *slog.Logger, res any, runErr, cause error, secs float64) {
	var raw json.RawMessage
	if runErr == nil && res != nil {
		var err error
		if raw, err = json.Marshal(res); err != nil {
			runErr = err
		}
	}
	r.mu.Lock()
	var live *store.Progress
	if a, ok := r.active[id]; ok {
		p := a.progress
		live = &p
	}
	r.mu.Unlock()
	outcome := func(j *store.Job) store.State {
		switch {
		case errors.Is(cause, errDrain):
			return store.Queued
		case errors.Is(cause, errCancelled) || j.CancelRequested:
			return store.Cancelled
		case runErr != nil:
			return store.Failed
		}
		return store.Done
	}
	// Inputs are cleaned up before the final state is stored, so that a
	// client that sees the job end finds its uploads already recycled.
	if cur, err := r.st.Get(id); err == nil && outcome(cur).Final() {
		r.env.Cleanup(cleanupOf(cur.Spec))
	}
	j, err := r.st.Update(id, func(j *store.Job) error {
		switch j.State = outcome(j); j.State {
		case store.Queued:
			j.Attempts-- // not a failure: it resumes at the next start
			j.Notes = append(j.Notes, "stopped by a daemon shutdown; resumes at the next start")
		case store.Cancelled:
			j.Error = errCancelled.Error()
		case store.Failed:
			j.Error = runErr.Error()
		default:
			j.Result = raw
			if live != nil {
				j.Progress = *live
			}
			if j.Progress.Total > 0 {
				j.Progress.Done = j.Progress.Total
			}
		}
		return nil
	})
	if err != nil {
		log.Error("cannot record job end", "error", err)
		return
	}
	r.notify(id)
	log.Info("job ended", "state", j.State, "seconds", secs, "error", j.Error)
}

// cleanupOf reads a spec's cleanup list.
func cleanupOf(spec json.RawMessage) []string {
	var c struct {
		Cleanup []string `json:"cleanup"`
	}
	_ = json.Unmarshal(spec, &c)
	return c.Cleanup
}

// Submit validates and stores a job and queues it. With an idempotency
// key already used for the same request it returns the stored job and
// existed = true (and queues nothing).
func (r *Runner) Submit(typ string, spec json.RawMessage, key string) (*store.Job, bool, error) {
	out, existed, err := r.submit([]Request{{Type: typ, Spec: spec, Key: key}})
	if err != nil {
		return nil, false, err
	}
	return out[0], existed[0], nil
}

// Request is one job to submit: its type, spec and optional idempotency key.
type Request struct {
	Type string          `json:"type"`
	Spec json.RawMessage `json:"spec"`
	Key  string          `json:"idempotency_key"`
}

// MaxBatch bounds how many jobs one SubmitMany call may carry.
const MaxBatch = 10000

// SubmitMany validates every request, then stores them all in one store
// transaction (one commit, one fsync) and queues them in order: all or,
// when any request is refused, none (the error names its index and type).
// existed[i] reports a job found by its idempotency key.
func (r *Runner) SubmitMany(reqs []Request) ([]*store.Job, []bool, error) {
	if len(reqs) == 0 {
		return nil, nil, invalid("submit_many: no jobs")
	}
	if len(reqs) > MaxBatch {
		return nil, nil, fmt.Errorf("%w: submit_many: %d jobs exceed the limit of %d per call", ErrTooLarge, len(reqs), MaxBatch)
	}
	return r.submit(reqs)
}

func (r *Runner) submit(reqs []Request) ([]*store.Job, []bool, error) {
	if r.Draining() {
		return nil, nil, fmt.Errorf("%w: not accepting new jobs", ErrDraining)
	}
	name := func(i int, err error) error {
		if len(reqs) == 1 {
			return err
		}
		return fmt.Errorf("jobs[%d] (%s): %w", i, reqs[i].Type, err)
	}
	out := make([]*store.Job, len(reqs))
	existed := make([]bool, len(reqs))
	var todo []*store.Job
	var at []int
	for i, q := range reqs {
		k, ok := kinds[q.Type]
		if !ok {
			return nil, nil, name(i, invalid("unknown job type %q (known: %s)", q.Type, strings.Join(Types(), ", ")))
		}
		if len(q.Key) > 256 {
			return nil, nil, name(i, invalid("idempotency key longer than 256 bytes"))
		}
		spec := q.Spec
		if len(spec) == 0 {
			spec = json.RawMessage("{}")
		}
		hash := store.HashSpec(q.Type, spec)
		if q.Key != "" {
			// A retried submit must find its job even after its inputs are gone.
			if old, err := r.st.ByKey(q.Key); err == nil {
				if old.SpecHash != hash {
					return nil, nil, name(i, fmt.Errorf("%w: key %q belongs to job %d (%s)", store.ErrKeyReused, q.Key, old.ID, old.Type))
				}
				out[i], existed[i] = old, true
				continue
			}
		}
		norm, err := k.check(r.env, spec)
		if err != nil {
			return nil, nil, name(i, err)
		}
		todo = append(todo, &store.Job{Type: q.Type, Spec: norm, Key: q.Key, SpecHash: hash})
		at = append(at, i)
	}
	if len(todo) > 0 {
		stored, ex, err := r.st.SubmitMany(todo)
		if err != nil {
			return nil, nil, err
		}
		var ids []uint64
		for n, j := range stored {
			out[at[n]], existed[at[n]] = j, ex[n]
			if !ex[n] {
				ids = append(ids, j.ID)
			}
		}
		r.enqueue(ids...)
		for _, id := range ids {
			r.log.Debug("job submitted", "job", id)
		}
	}
	return out, existed, nil
}

// Cancel stops a job: a queued one at once, a running one as soon as its
// kernel checks (between tensors), a session at once. Cancelling a
// finished job changes nothing.
func (r *Runner) Cancel(id uint64) (*Status, error) {
	sess, isSession := r.takeSession(id)
	j, err := r.st.Update(id, func(j *store.Job) error {
		switch {
		case j.State.Final():
		case j.State == store.Queued || isSession:
			j.State, j.Error = store.Cancelled, errCancelled.Error()
		default:
			j.CancelRequested = true
		}
		return nil
	})
	if err != nil {
		if isSession { // put it back: nothing changed
			r.mu.Lock()
			r.sessions[id] = sess
			r.mu.Unlock()
		}
		return nil, err
	}
	if isSession {
		sess.s.Close()
	}
	r.mu.Lock()
	if a, ok := r.active[id]; ok {
		a.cancel(errCancelled)
	}
	if j.State == store.Cancelled {
		for i, q := range r.queue {
			if q == id {
				r.queue = append(r.queue[:i], r.queue[i+1:]...)
				break
			}
		}
	}
	r.notifyLocked(id)
	r.mu.Unlock()
	if j.State == store.Cancelled && (isSession || j.Started == nil) {
		r.env.Cleanup(cleanupOf(j.Spec))
	}
	return r.Status(id)
}

// Status is a job as clients see it.
type Status struct {
	ID              uint64          `json:"id"`
	Type            string          `json:"type"`
	State           store.State     `json:"state"`
	Progress        store.Progress  `json:"progress"`
	Error           string          `json:"error,omitempty"`
	Result          json.RawMessage `json:"result,omitempty"`
	Notes           []string        `json:"notes,omitempty"`
	Submitted       time.Time       `json:"submitted"`
	Started         *time.Time      `json:"started,omitempty"`
	Finished        *time.Time      `json:"finished,omitempty"`
	Attempts        int             `json:"attempts"`
	IdempotencyKey  string          `json:"idempotency_key,omitempty"`
	CancelRequested bool            `json:"cancel_requested,omitempty"`
	// Session is set for interactive jobs; Ready once ask/tell work.
	Session bool `json:"session,omitempty"`
	Ready   bool `json:"ready,omitempty"`
}

// Status returns job id with its live progress.
func (r *Runner) Status(id uint64) (*Status, error) {
	j, err := r.st.Get(id)
	if err != nil {
		return nil, err
	}
	return r.View(j), nil
}

// View returns job j (as the store returned it) as clients see it, with
// its live progress, without reading the store again.
func (r *Runner) View(j *store.Job) *Status {
	s := &Status{ID: j.ID, Type: j.Type, State: j.State, Progress: j.Progress, Error: j.Error, Result: j.Result,
		Notes: j.Notes, Submitted: j.Submitted, Started: j.Started, Finished: j.Finished, Attempts: j.Attempts,
		IdempotencyKey: j.Key, CancelRequested: j.CancelRequested}
	if k, ok := kinds[j.Type]; ok {
		s.Session = k.session
	}
	r.mu.Lock()
	if a, ok := r.active[j.ID]; ok && j.State == store.Running {
		s.Progress = a.progress
	}
	if e, ok := r.sessions[j.ID]; ok && j.State == store.Running {
		s.Progress, s.Ready = e.progress, true
	}
	r.mu.Unlock()
	return s
}

// List returns the jobs f selects as clients see them.
func (r *Runner) List(f store.Filter) ([]*Status, error) {
	js, err := r.st.List(f)
	if err != nil {
		return nil, err
	}
	out := make([]*Status, len(js))
	for i, j := range js {
		out[i] = r.View(j)
	}
	return out, nil
}

// Watch sends job id's status now and after every change until the job
// is final (or, with untilReady, its session ready), timeout passes, ctx
// ends or the daemon drains. Progress updates are sent at most every
// interval; the final status is sent as soon as it is stored.
func (r *Runner) Watch(ctx context.Context, id uint64, timeout, interval time.Duration, untilReady bool, send func(*Status) error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var last time.Time
	var lastProgress store.Progress
	var lastState store.State
	for {
		ch := r.changed(id)
		st, err := r.Status(id)
		if err != nil {
			return err
		}
		final := st.State.Final() || (untilReady && st.Session && st.Ready)
		var wake <-chan time.Time
		if changed := last.IsZero() || st.State != lastState || st.Progress != lastProgress; changed {
			if wait := interval - time.Since(last); final || st.State != lastState || wait <= 0 {
				if err := send(st); err != nil {
					return err
				}
				if final {
					return nil
				}
				last, lastProgress, lastState = time.Now(), st.Progress, st.State
			} else {
				wake = time.After(wait) // send the newest progress a little later
			}
		}
		select {
		case <-ch:
		case <-wake:
		case <-deadline.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-r.drainCh:
			return fmt.Errorf("%w: reconnect after the restart", ErrDraining)
		}
	}
}

// Delete removes a finished job, its result file and its record.
func (r *Runner) Delete(id uint64) error {
	j, err := r.st.Get(id)
	if err != nil {
		return err
	}
	if !j.State.Final() {
		return fmt.Errorf("%w: job %d is %s; cancel it first", ErrState, id, j.State)
	}
	if p := resultPath(j); p != "" {
		if err := r.env.RemoveResult(p); err != nil {
			return err
		}
		r.budget.Drop(p)
	}
	return r.st.Delete(id)
}

// Release deletes the shared-memory result file of a finished job once
// its client has mapped it (the record stays; the result is then gone).
func (r *Runner) Release(id uint64) (*Status, error) { return r.ReleaseAs(id, "") }

// ReleaseAs is Release, except that with slab != "" the result file is
// handed back to its client as the free slab slab (Env.RecycleResult)
// instead of deleted: the client does so once it holds no view of it.
func (r *Runner) ReleaseAs(id uint64, slab string) (*Status, error) {
	j, err := r.st.Get(id)
	if err != nil {
		return nil, err
	}
	p := resultPath(j)
	if j.State != store.Done || p == "" {
		return nil, fmt.Errorf("%w: job %d has no tensor result to release", ErrState, id)
	}
	if slab != "" {
		err = r.env.RecycleResult(p, slab)
	} else {
		err = r.env.RemoveResult(p)
	}
	if err != nil {
		return nil, fmt.Errorf("job %d: %w", id, err)
	}
	r.budget.Drop(p)
	j, err = r.st.Update(id, func(j *store.Job) error {
		var m map[string]any
		if json.Unmarshal(j.Result, &m) == nil {
			m["released"] = true
			j.Result, _ = json.Marshal(m)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.View(j), nil
}

// resultPath is the tensor file of a finished job ("" if it has none).
func resultPath(j *store.Job) string {
	var res struct {
		Path     string `json:"path"`
		Kind     string `json:"kind"`
		Released bool   `json:"released"`
	}
	if json.Unmarshal(j.Result, &res) != nil || res.Kind != "tensors" || res.Released {
		return ""
	}
	return res.Path
}

// ResultPath returns the tensor file of a done job (ErrState if it has
// none).
func (r *Runner) ResultPath(id uint64) (string, error) {
	j, err := r.st.Get(id)
	if err != nil {
		return "", err
	}
	if j.State != store.Done {
		return "", fmt.Errorf("%w: job %d is %s, not done", ErrState, id, j.State)
	}
	p := resultPath(j)
	if p == "" {
		return "", fmt.Errorf("%w: job %d has no tensor result (a checkpoint folder, or already released)", ErrState, id)
	}
	return p, nil
}

// Session returns the live session of job id.
func (r *Runner) Session(id uint64) (Session, error) {
	r.mu.Lock()
	e, ok := r.sessions[id]
	if ok {
		e.used = time.Now()
	}
	r.mu.Unlock()
	if ok {
		return e.s, nil
	}
	j, err := r.st.Get(id)
	if err != nil {
		return nil, err
	}
	if k := kinds[j.Type]; k == nil || !k.session {
		return nil, fmt.Errorf("%w: job %d is a %s job, not an interactive session", ErrState, id, j.Type)
	}
	if j.State.Final() {
		return nil, fmt.Errorf("%w: session %d is %s", ErrState, id, j.State)
	}
	return nil, fmt.Errorf("%w: session %d is not ready yet (%s); wait for it", ErrState, id, j.State)
}

// WaitSession waits up to timeout for job id's session to be ready
// (Watch until it is ready or final).
func (r *Runner) WaitSession(ctx context.Context, id uint64, timeout time.Duration) (Session, error) {
	var last *Status
	if err := r.Watch(ctx, id, timeout, 0, true, func(st *Status) error {
		last = st
		return nil
	}); err != nil {
		return nil, err
	}
	s, err := r.Session(id)
	if err != nil && last.State.Final() && last.Error != "" {
		return nil, fmt.Errorf("%w: session %d is %s: %s", ErrState, id, last.State, last.Error)
	}
	return s, err
}

// SessionProgress publishes a session's progress (generation, best).
func (r *Runner) SessionProgress(id uint64, p store.Progress) { r.setProgress(id, p) }

// takeSession removes session id from the live sessions and returns it.
func (r *Runner) takeSession(id uint64) (*sessionEntry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.sessions[id]
	delete(r.sessions, id)
	return e, ok
}

// Finish ends session id: its result is written and the job is done.
func (r *Runner) Finish(id uint64) (*Status, error) {
	e, ok := r.takeSession(id)
	if !ok {
		_, err := r.Session(id)
		return nil, err
	}
	res, err := e.s.Finish()
	e.s.Close()
	r.settle(id, r.log.With("job", id), res, err, nil, 0)
	return r.Status(id)
}

// Drain stops taking jobs and waits for the running ones until ctx ends;
// those still running then are stopped and put back in the queue (they
// resume at the next start). Sessions are closed without a state change
// (their last checkpoint is on disk). After Drain, Submit fails.
func (r *Runner) Drain(ctx context.Context) {
	r.mu.Lock()
	if !r.draining {
		r.draining = true
		close(r.drainCh)
	}
	r.cond.Broadcast()
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		r.mu.Lock()
		n := len(r.active)
		for _, a := range r.active {
			a.cancel(errDrain)
		}
		r.mu.Unlock()
		r.log.Warn("drain timeout: checkpointing running jobs", "jobs", n)
		<-done
	}
	r.mu.Lock()
	sessions := r.sessions
	r.sessions = map[uint64]*sessionEntry{}
	r.mu.Unlock()
	for _, e := range sessions {
		e.s.Close()
	}
}
