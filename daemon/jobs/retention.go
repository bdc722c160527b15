package jobs

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/npsfuse/npsfuse/daemon/store"
)

// Retention bounds what finished jobs leave behind: their records and
// result files, and how long an open session may sit unused. A zero field
// keeps that dimension unbounded.
type Retention struct {
	// MaxAge removes a finished job (record and result file) this long
	// after it finished.
	MaxAge time.Duration
	// MaxJobs keeps at most this many finished jobs, removing the oldest.
	MaxJobs int
	// MaxResultBytes keeps the result files of finished jobs within this
	// many bytes together, removing the oldest jobs first.
	MaxResultBytes int64
	// SessionIdle cancels an open session no client has used (ask, tell,
	// state) for this long.
	SessionIdle time.Duration
}

// Swept is what one sweep removed.
type Swept struct {
	Jobs, Sessions int
	// Bytes is the size of the result files removed.
	Bytes int64
	// ResultBytes is the size of the result files kept.
	ResultBytes int64
}

// finished is a finished job with its result file's size.
type finished struct {
	id    uint64
	at    time.Time
	bytes int64
}

// Sweep applies p at time now: first idle sessions are cancelled, then
// finished jobs are removed oldest first while one is older than MaxAge,
// more than MaxJobs remain, or their result files exceed MaxResultBytes.
// A job that cannot be removed is logged and kept for the next sweep.
func (r *Runner) Sweep(now time.Time, p Retention) (Swept, error) {
	var out Swept
	if p.SessionIdle > 0 {
		r.mu.Lock()
		var idle []uint64
		for id, e := range r.sessions {
			if now.Sub(e.used) > p.SessionIdle {
				idle = append(idle, id)
			}
		}
		r.mu.Unlock()
		slices.Sort(idle)
		for _, id := range idle {
			if err := r.expire(id, p.SessionIdle); err != nil {
				r.log.Warn("cannot expire an idle session", "job", id, "error", err)
				continue
			}
			out.Sessions++
		}
	}
	jobs, err := r.st.List(store.Filter{States: []store.State{store.Done, store.Failed, store.Cancelled}})
	if err != nil {
		return out, err
	}
	list := make([]finished, 0, len(jobs))
	for _, j := range jobs {
		f := finished{id: j.ID, at: j.Submitted}
		if j.Finished != nil {
			f.at = *j.Finished
		}
		if path := resultPath(j); path != "" {
			if st, err := os.Stat(path); err == nil {
				f.bytes = st.Size()
			}
		}
		out.ResultBytes += f.bytes
		list = append(list, f)
	}
	slices.SortStableFunc(list, func(a, b finished) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
	remaining := len(list)
	for _, f := range list {
		over := (p.MaxAge > 0 && now.Sub(f.at) > p.MaxAge) ||
			(p.MaxJobs > 0 && remaining > p.MaxJobs) ||
			(p.MaxResultBytes > 0 && out.ResultBytes > p.MaxResultBytes)
		if !over {
			break
		}
		if err := r.Delete(f.id); err != nil {
			r.log.Warn("retention cannot remove a finished job", "job", f.id, "error", err)
			continue
		}
		remaining--
		out.Jobs++
		out.Bytes += f.bytes
		out.ResultBytes -= f.bytes
	}
	if out.Jobs > 0 || out.Sessions > 0 {
		r.log.Info("retention sweep", "jobs_removed", out.Jobs, "bytes_removed", out.Bytes, "sessions_expired", out.Sessions)
	}
	return out, nil
}

// StartRetention applies p once before it returns, so that the policy
// holds from the caller's first request on, then sweeps every interval in
// a goroutine until ctx ends or the runner drains, reporting each sweep to
// report (which may be nil). The returned channel is closed when that
// goroutine has returned.
func (r *Runner) StartRetention(ctx context.Context, p Retention, interval time.Duration, report func(Swept)) <-chan struct{} {
	sweep := func() {
		s, err := r.Sweep(time.Now(), p)
		if err != nil {
			r.log.Warn("retention sweep failed", "error", err)
		} else if report != nil {
			report(s)
		}
	}
	sweep()
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.drainCh:
				return
			case <-t.C:
				sweep()
			}
		}
	}()
	return done
}

// expire cancels session id for having been idle longer than idle.
func (r *Runner) expire(id uint64, idle time.Duration) error {
	if _, err := r.Cancel(id); err != nil {
		return err
	}
	_, err := r.st.Update(id, func(j *store.Job) error {
		if j.State == store.Cancelled {
			j.Error = fmt.Sprintf("expired: no client used this session for %v (session_idle_timeout)", idle)
		}
		return nil
	})
	r.notify(id)
	return err
}
