// Package fault is npsfuse's one error taxonomy: every error a door reports
// (the Python extension, the daemon's gRPC service) has a Kind, and each
// door maps kinds to its own vocabulary in one table (pybind/errors.go:
// Python exceptions; daemon/server/errors.go: gRPC codes).
//
// Packages declare their sentinel errors with New, which gives the sentinel
// a kind without changing its text, and wrap them as before
// (fmt.Errorf("%w: …", ErrInput)); errors.Is on the sentinel keeps working.
// KindOf finds the kind of any error chain.
package fault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Kind classifies an error by whose fault it is and what the caller can
// do about it. The zero value is Internal.
type Kind uint8

// The six kinds of the engine, then the daemon's service kinds (states of
// a request, not of the data), which only the daemon reports.
const (
	// Internal is a bug or an unexpected failure of the machine (an I/O
	// error other than the ones below, a recovered panic).
	Internal Kind = iota
	// InvalidInput is a caller's mistake in values, shapes, names, configs
	// or files' contents; the message names the culprit.
	InvalidInput
	// InvalidTensor is invalid input whose fault is a tensor handed over
	// in memory: its type, layout or buffers (Python's TypeError).
	InvalidTensor
	// NotFound is a named thing that does not exist (file, job, upload).
	NotFound
	// Permission is an access the caller (or the daemon's user) may not
	// make: a path outside the data roots, a file the OS refuses.
	Permission
	// ResourceExhausted is a limit reached: disk full or quota, a memory
	// budget, a size limit.
	ResourceExhausted
	// Cancelled is a call stopped on request (Ctrl-C, a cancelled job).
	Cancelled

	// AlreadyExists is a name already taken (upload, idempotency key,
	// output folder in the way).
	AlreadyExists
	// FailedPrecondition is a request that does not fit the current state
	// (a job in the wrong state).
	FailedPrecondition
	// Unavailable is a service that cannot take the request now (the
	// daemon is shutting down).
	Unavailable
	// Unimplemented is a request the service does not support.
	Unimplemented
	// DeadlineExceeded is a call that ran out of time.
	DeadlineExceeded
)

// Kinds lists every kind, in declaration order.
var Kinds = []Kind{Internal, InvalidInput, InvalidTensor, NotFound, Permission, ResourceExhausted, Cancelled,
	AlreadyExists, FailedPrecondition, Unavailable, Unimplemented, DeadlineExceeded}

var names = [...]string{
	Internal: "internal", InvalidInput: "invalid_input", InvalidTensor: "invalid_tensor", NotFound: "not_found",
	Permission: "permission", ResourceExhausted: "resource_exhausted", Cancelled: "cancelled",
	AlreadyExists: "already_exists", FailedPrecondition: "failed_precondition", Unavailable: "unavailable",
	Unimplemented: "unimplemented", DeadlineExceeded: "deadline_exceeded",
}

// String is the kind's snake_case name ("invalid_input"), the name the
// Python door tags errors with.
func (k Kind) String() string {
	if int(k) < len(names) {
		return names[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// ParseKind is String's inverse.
func ParseKind(s string) (Kind, bool) {
	for _, k := range Kinds {
		if names[k] == s {
			return k, true
		}
	}
	return Internal, false
}

// kinded is implemented by errors that carry a kind.
type kinded interface{ FaultKind() Kind }

// sentinel is an error value with a kind, made by New.
type sentinel struct {
	kind Kind
	msg  string
}

func (s *sentinel) Error() string { return s.msg }

// FaultKind returns the sentinel's kind.
func (s *sentinel) FaultKind() Kind { return s.kind }

// Is makes errors.Is(err, kind) match the sentinel's kind.
func (s *sentinel) Is(target error) bool { k, ok := target.(Kind); return ok && k == s.kind }

// New returns a sentinel error with text msg and kind k: a package's
// ErrInput, to be wrapped with %w. Each call returns a distinct error.
func New(k Kind, msg string) error { return &sentinel{kind: k, msg: msg} }

// wrapped is an error given a kind by Wrap or Errorf.
type wrapped struct {
	kind Kind
	err  error
}

func (w *wrapped) Error() string { return w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// FaultKind returns the kind given to the error.
func (w *wrapped) FaultKind() Kind { return w.kind }

// Is makes errors.Is(err, kind) match the kind given to the error.
func (w *wrapped) Is(target error) bool { k, ok := target.(Kind); return ok && k == w.kind }

// Wrap gives err kind k without changing its text (nil stays nil). The
// kind is found before any kind further down err's chain.
func Wrap(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &wrapped{kind: k, err: err}
}

// Errorf is fmt.Errorf (%w included) with kind k.
func Errorf(k Kind, format string, a ...any) error { return Wrap(k, fmt.Errorf(format, a...)) }

// KindOf classifies err (nil: Internal; check for nil first). In order:
//
//  1. a full disk or quota (ENOSPC, EDQUOT) anywhere in the chain is
//     ResourceExhausted, and an access the OS refused (EACCES, EPERM,
//     fs.ErrPermission) is Permission: the environment's state decides,
//     whatever layer reported it;
//  2. the first error in the chain with a kind (New, Wrap, Errorf);
//  3. context.Canceled is Cancelled, context.DeadlineExceeded
//     DeadlineExceeded;
//  4. fs.ErrNotExist is NotFound, fs.ErrExist AlreadyExists;
//  5. anything else is Internal.
func KindOf(err error) Kind {
	switch {
	case err == nil:
		return Internal
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return ResourceExhausted
	case errors.Is(err, fs.ErrPermission):
		return Permission
	}
	var k kinded
	if errors.As(err, &k) {
		return k.FaultKind()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return Cancelled
	case errors.Is(err, context.DeadlineExceeded):
		return DeadlineExceeded
	case errors.Is(err, fs.ErrNotExist):
		return NotFound
	case errors.Is(err, fs.ErrExist):
		return AlreadyExists
	}
	return Internal
}

// Is reports whether KindOf(err) is k (false for nil).
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }

// Error makes a Kind usable as errors.Is's target: errors.Is(err,
// fault.NotFound) reports whether an error in err's chain was declared or
// wrapped with that kind (KindOf, which also reads the OS's and context's
// errors and picks one kind, is the classification the doors use). Its
// text is the kind's name.
func (k Kind) Error() string { return k.String() }
