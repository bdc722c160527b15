package server

import (
	"context"
	"crypto/subtle"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// authenticator checks bearer tokens. On TCP every call needs a valid
// token; on the Unix socket (already limited to its owner by mode 0600) a
// token is optional, but a wrong one is still refused.
type authenticator struct {
	tokens   [][]byte
	optional bool
	failed   func(reason string)
}

// check returns nil or an UNAUTHENTICATED status.
func (a *authenticator) check(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		if a.optional {
			return nil
		}
		a.failed("missing")
		return status.Error(codes.Unauthenticated, "missing bearer token: send the header \"authorization: Bearer <token>\" (npsfuse.Client(token=...) or NPSFUSE_TOKEN)")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		a.failed("invalid")
		return status.Error(codes.Unauthenticated, "malformed authorization header: want \"Bearer <token>\"")
	}
	if len(a.tokens) == 0 && a.optional {
		return nil // no tokens configured on the socket: nothing to compare
	}
	match := 0
	for _, t := range a.tokens {
		match |= subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), t)
	}
	if match != 1 {
		a.failed("invalid")
		return status.Error(codes.Unauthenticated, "invalid bearer token")
	}
	return nil
}

// observe records a call's method, code and latency.
type observe func(method string, code codes.Code, seconds float64)

func (a *authenticator) unary(obs observe) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		if err := a.check(ctx); err != nil {
			obs(shortMethod(info.FullMethod), codes.Unauthenticated, time.Since(start).Seconds())
			return nil, err
		}
		resp, err := h(ctx, req)
		obs(shortMethod(info.FullMethod), status.Code(err), time.Since(start).Seconds())
		return resp, err
	}
}

func (a *authenticator) stream(obs observe) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := time.Now()
		if err := a.check(ss.Context()); err != nil {
			obs(shortMethod(info.FullMethod), codes.Unauthenticated, time.Since(start).Seconds())
			return err
		}
		name := new(string)
		err := h(srv, &namedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), actionKey{}, name)})
		method := shortMethod(info.FullMethod)
		if *name != "" {
			method += "/" + *name
		}
		obs(method, status.Code(err), time.Since(start).Seconds())
		return err
	}
}

// actionKey holds, in a DoAction call's context, where the handler
// records the action's type for the metrics.
type actionKey struct{}

func setActionName(ctx context.Context, name string) {
	if p, ok := ctx.Value(actionKey{}).(*string); ok {
		*p = name
	}
}

// namedStream is a server stream whose context carries the action-name slot.
type namedStream struct {
	grpc.ServerStream
	ctx context.Context
}

// Context returns the stream's context with the slot.
func (s *namedStream) Context() context.Context { return s.ctx }

func shortMethod(full string) string {
	if i := strings.LastIndex(full, "/"); i >= 0 {
		return full[i+1:]
	}
	return full
}
