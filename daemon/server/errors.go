package server

import (
	"errors"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// grpcCodes is the one mapping of the error taxonomy (gocore/fault) to the
// gRPC codes clients see. Every kind has a row.
var grpcCodes = map[fault.Kind]codes.Code{
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

// codeOf maps an error to the gRPC status code clients see: its kind
// (fault.KindOf) through grpcCodes.
func codeOf(err error) codes.Code {
	if c, ok := grpcCodes[fault.KindOf(err)]; ok {
		return c
	}
	return codes.Internal
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

// statusf is a status error of kind k with a formatted message, for the
// handlers' own checks (the code still comes from grpcCodes).
func statusf(k fault.Kind, format string, a ...any) error {
	return toStatus(fault.Errorf(k, format, a...))
}

// noSpace reports a write that failed because the file system is full
// (or the user's quota is); fault.KindOf classifies it ResourceExhausted.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
