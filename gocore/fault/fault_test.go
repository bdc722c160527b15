package fault

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

var (
	errBad  = New(InvalidInput, "invalid thing")
	errGone = New(NotFound, "no such thing")
)

func TestKindOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Kind
	}{
		{"nil", nil, Internal},
		{"plain error", errors.New("boom"), Internal},
		{"sentinel", errBad, InvalidInput},
		{"wrapped sentinel", fmt.Errorf("tensor %q: %w", "w", errBad), InvalidInput},
		{"outer kind first", fmt.Errorf("%w: %w", errGone, errBad), NotFound},
		{"Wrap over sentinel", Wrap(Unavailable, fmt.Errorf("x: %w", errBad)), Unavailable},
		{"Errorf", Errorf(AlreadyExists, "upload %q exists", "u"), AlreadyExists},
		{"cancelled", fmt.Errorf("merge cancelled: %w", context.Canceled), Cancelled},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), DeadlineExceeded},
		{"no such file", &fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, NotFound},
		{"exists", &fs.PathError{Op: "mkdir", Path: "/x", Err: syscall.EEXIST}, AlreadyExists},
		{"os permission", &fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, Permission},
		// the environment's state wins over the layer that reported it
		{"permission under a sentinel", fmt.Errorf("%w: %w", errBad, os.ErrPermission), Permission},
		{"disk full under a sentinel", fmt.Errorf("%w: %w", errBad, syscall.ENOSPC), ResourceExhausted},
		{"quota under Internal", Wrap(Internal, fmt.Errorf("write: %w", syscall.EDQUOT)), ResourceExhausted},
		// a sentinel's kind wins over a missing file below it
		{"not-exist under a sentinel", fmt.Errorf("%w: %w", errBad, fs.ErrNotExist), InvalidInput},
		{"other errno", fmt.Errorf("read: %w", syscall.EIO), Internal},
	}
	for _, tc := range tests {
		if got := KindOf(tc.err); got != tc.want {
			t.Errorf("%s: KindOf(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
		if got := Is(tc.err, tc.want); got != (tc.err != nil) {
			t.Errorf("%s: Is(err, %v) = %v", tc.name, tc.want, got)
		}
	}
}

// Sentinels keep their identity and text; errors.Is matches a declared kind.
func TestSentinelsAndErrorsIs(t *testing.T) {
	err := fmt.Errorf("tensor %q: %w", "w", errBad)
	if !errors.Is(err, errBad) || errors.Is(err, errGone) {
		t.Error("errors.Is on sentinels")
	}
	if err.Error() != `tensor "w": invalid thing` {
		t.Errorf("text %q", err)
	}
	if !errors.Is(err, InvalidInput) || errors.Is(err, NotFound) {
		t.Error("errors.Is(err, kind) does not match the declared kind")
	}
	if !errors.Is(Errorf(Cancelled, "stop"), Cancelled) {
		t.Error("errors.Is(Errorf(k), k)")
	}
	if New(InvalidInput, "a") == New(InvalidInput, "a") {
		t.Error("New returns the same error twice")
	}
	if Wrap(InvalidInput, nil) != nil {
		t.Error("Wrap(nil) != nil")
	}
	var k interface{ FaultKind() Kind }
	if !errors.As(err, &k) || k.FaultKind() != InvalidInput {
		t.Error("errors.As to the kinded interface")
	}
}

func TestKindNames(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range Kinds {
		s := k.String()
		if seen[s] || s == "" {
			t.Errorf("kind %d: name %q empty or repeated", k, s)
		}
		seen[s] = true
		if back, ok := ParseKind(s); !ok || back != k {
			t.Errorf("ParseKind(%q) = %v, %v", s, back, ok)
		}
		if k.Error() != s {
			t.Errorf("Kind.Error() = %q, want %q", k.Error(), s)
		}
	}
	if len(Kinds) != int(DeadlineExceeded)+1 {
		t.Errorf("Kinds lists %d kinds, want %d", len(Kinds), DeadlineExceeded+1)
	}
	if _, ok := ParseKind("nope"); ok {
		t.Error("ParseKind accepted an unknown name")
	}
}
