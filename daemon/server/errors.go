package server

import (
	"context"
	"errors"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/arrowio/stream"
	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/jobs"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/nps"
)

// codeOf maps an error to the gRPC status code clients see.
func codeOf(err error) codes.Code {
	switch {
	case errors.Is(err, config.ErrOutsideRoots):
		return codes.PermissionDenied
	case errors.Is(err, store.ErrNotFound), errors.Is(err, jobs.ErrNoUpload):
		return codes.NotFound
	case errors.Is(err, store.ErrKeyReused):
		return codes.AlreadyExists
	case errors.Is(err, jobs.ErrDraining), errors.Is(err, store.ErrClosed):
		return codes.Unavailable
	case errors.Is(err, jobs.ErrTooLarge), noSpace(err):
		return codes.ResourceExhausted
	case errors.Is(err, jobs.ErrUnsupported):
		return codes.Unimplemented
	case errors.Is(err, jobs.ErrState), errors.Is(err, store.ErrTransition):
		return codes.FailedPrecondition
	case errors.Is(err, jobs.ErrInvalid), errors.Is(err, stream.ErrConfig), errors.Is(err, stream.ErrInput),
		errors.Is(err, merge.ErrInput), errors.Is(err, nps.ErrInput), errors.Is(err, tensors.ErrIPC),
		errors.Is(err, checkpoint.ErrCheckpoint), errors.Is(err, safetensors.ErrBadHeader):
		return codes.InvalidArgument
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	}
	var se *safetensors.Error
	if errors.As(err, &se) {
		return codes.InvalidArgument
	}
	return codes.Internal
}

// noSpace reports a write that failed because the file system is full
// (or the user's quota is).
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// toStatus turns an error into a gRPC status error (statuses pass through).
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codeOf(err), err.Error())
}
