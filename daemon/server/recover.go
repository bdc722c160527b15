package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"google.golang.org/grpc"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// panicStatus logs a handler's panic with its stack and returns the
// INTERNAL status the client gets instead of a dead daemon.
func panicStatus(log *slog.Logger, method string, p any) error {
	log.Error("handler panic recovered", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return statusf(fault.Internal, "internal error in %s (a bug in npsfused, recovered; please report it): %v", shortMethod(method), p)
}

// recoverUnary turns a panic in a unary handler into an INTERNAL error.
func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				resp, err = nil, panicStatus(log, info.FullMethod, p)
			}
		}()
		return h(ctx, req)
	}
}

// recoverStream turns a panic in a streaming handler (DoAction, DoPut,
// DoGet, ...) into an INTERNAL error.
func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = panicStatus(log, info.FullMethod, p)
			}
		}()
		return h(srv, ss)
	}
}
