package server

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/arrowio/stream"
	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/jobs"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
)

// TestGRPCCodeOfEveryKind: the one kind → code table, every kind listed.
func TestGRPCCodeOfEveryKind(t *testing.T) {
	want := map[fault.Kind]codes.Code{
		fault.Internal:           codes.Internal,
		fault.InvalidInput:       codes.InvalidArgument,
		fault.InvalidTensor:      codes.InvalidArgument,
		fault.NotFound:           codes.NotFound,
		fault.Permission:         codes.PermissionDenied,
		fault.ResourceExhausted:  codes.ResourceExhausted,
		fault.Cancelled:          codes.Canceled,
		fault.AlreadyExists:      codes.AlreadyExists,
		fault.FailedPrecondition: codes.FailedPrecondition,
		fault.Unavailable:        codes.Unavailable,
		fault.Unimplemented:      codes.Unimplemented,
		fault.DeadlineExceeded:   codes.DeadlineExceeded,
	}
	for _, k := range fault.Kinds {
		w, ok := want[k]
		if !ok {
			t.Errorf("kind %v has no expected code in this test", k)
			continue
		}
		if got := codeOf(fault.Errorf(k, "x")); got != w {
			t.Errorf("kind %v → %v, want %v", k, got, w)
		}
		if _, ok := grpcCodes[k]; !ok {
			t.Errorf("kind %v has no row in grpcCodes", k)
		}
	}
}

// TestCodeOfEngineAndDaemonErrors: the sentinels of every layer reach the
// code of their kind, through wrapping, as before the taxonomy.
func TestCodeOfEngineAndDaemonErrors(t *testing.T) {
	diskFull := &safetensors.Error{Path: "/u/x.safetensors", Kind: safetensors.ErrIO, Msg: "write failed", Err: syscall.ENOSPC}
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"merge input", fmt.Errorf("tensor %q: %w: gamma", "w", merge.ErrInput), codes.InvalidArgument},
		{"merge config", fmt.Errorf("%w: models[0]", stream.ErrConfig), codes.InvalidArgument},
		{"bad request", fmt.Errorf("%w: spec", jobs.ErrInvalid), codes.InvalidArgument},
		{"bad tensor file", fmt.Errorf("%w: piece", tensors.ErrIPC), codes.InvalidArgument},
		{"malformed safetensors", &safetensors.Error{Kind: safetensors.ErrBadHeader, Msg: "x"}, codes.InvalidArgument},
		{"outside roots", fmt.Errorf("%w: /etc", config.ErrOutsideRoots), codes.PermissionDenied},
		{"no such job", store.ErrNotFound, codes.NotFound},
		{"no such upload", fmt.Errorf("%w: u", jobs.ErrNoUpload), codes.NotFound},
		{"key reused", store.ErrKeyReused, codes.AlreadyExists},
		{"draining", jobs.ErrDraining, codes.Unavailable},
		{"too large", fmt.Errorf("%w: memory_budget", jobs.ErrTooLarge), codes.ResourceExhausted},
		{"wrong state", jobs.ErrState, codes.FailedPrecondition},
		{"unsupported", jobs.ErrUnsupported, codes.Unimplemented},
		{"cancelled", fmt.Errorf("merge cancelled: %w", context.Canceled), codes.Canceled},
		{"disk I/O", &safetensors.Error{Kind: safetensors.ErrIO, Msg: "fsync", Err: syscall.EIO}, codes.Internal},
		// issue #16: a disk-full upload was INVALID_ARGUMENT
		{"disk-full upload", diskFull, codes.ResourceExhausted},
		{"disk-full piece", fmt.Errorf("%w: storing piece: %w", tensors.ErrIPC, syscall.ENOSPC), codes.ResourceExhausted},
		{"quota", fmt.Errorf("result: %w", syscall.EDQUOT), codes.ResourceExhausted},
		{"bug", fmt.Errorf("nil map"), codes.Internal},
	}
	for _, tc := range tests {
		if got := codeOf(tc.err); got != tc.want {
			t.Errorf("%s: codeOf(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
		st := toStatus(tc.err)
		if status.Code(st) != tc.want || !strings.Contains(st.Error(), tc.err.Error()) {
			t.Errorf("%s: toStatus = %v, want code %v and the error's text", tc.name, st, tc.want)
		}
	}
	// the disk-full upload through DoPut's own mapping, message kept
	st := uploadStatus("u", diskFull)
	if status.Code(st) != codes.ResourceExhausted || !strings.Contains(st.Error(), "upload u: the daemon's upload folder is full") {
		t.Errorf("uploadStatus(disk full) = %v", st)
	}
	// a status passes through unchanged
	if s := status.Error(codes.Unauthenticated, "no"); toStatus(s) != s {
		t.Error("toStatus changed a status error")
	}
}
