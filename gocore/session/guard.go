// Package session is the lifecycle a door gives an engine session
// (gocore/nps.Session, gocore/evolve.Session) it keeps between calls: one
// call at a time, a closed session refusing every call with one error, a
// result that borrows the session's buffers holding it until released,
// and a close that frees the session's resources exactly once. The daemon's
// sessions (daemon/jobs) embed a Guard instead of each carrying its own
// mutex, closed flag and checks.
package session

import (
	"sync"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// ErrClosed is what a call on a closed session returns when its Guard
// names no error of its own.
var ErrClosed = fault.New(fault.FailedPrecondition, "session closed")

// Guard serialises a session's calls and refuses them once the session is
// closed. The zero value is an open session whose calls on close return
// ErrClosed; a Guard must not be copied after first use.
type Guard struct {
	mu     sync.Mutex
	closed bool
	// Closed is the error a call returns once the session is closed (nil:
	// ErrClosed); a door sets it to its own wording.
	Closed error
}

func (g *Guard) closedErr() error {
	if g.Closed != nil {
		return g.Closed
	}
	return ErrClosed
}

// Do runs f with g's session locked and returns its results, or g's
// closed error without running f.
func Do[T any](g *Guard, f func() (T, error)) (T, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		var zero T
		return zero, g.closedErr()
	}
	return f()
}

// Hold locks the session for a result that borrows its buffers and
// returns the function that unlocks it (idempotent: only the first call
// unlocks). On a closed session it holds nothing and returns the closed
// error.
func (g *Guard) Hold() (release func(), err error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, g.closedErr()
	}
	var once sync.Once
	return func() { once.Do(g.mu.Unlock) }, nil
}

// Close marks the session closed and runs free with it locked, once:
// later calls (and calls racing this one) do nothing. It waits for a
// running call, and for a held result to be released.
func (g *Guard) Close(free func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	free()
}
