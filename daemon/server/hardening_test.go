package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/tensors"
)

// A panic in any handler becomes an INTERNAL error for that call; the
// daemon lives on (issue 16, High 3).
func TestHandlersRecoverPanics(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	boom := func() { panic(fmt.Sprintf("makeslice: len out of range (%d)", 1<<62)) }
	_, err := recoverUnary(log)(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/arrow.flight.protocol.FlightService/GetFlightInfo"},
		func(context.Context, any) (any, error) { boom(); return nil, nil })
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "makeslice") || !strings.Contains(err.Error(), "GetFlightInfo") {
		t.Errorf("unary: %v, want INTERNAL naming the method and the panic", err)
	}
	err = recoverStream(log)(nil, nil, &grpc.StreamServerInfo{FullMethod: "/arrow.flight.protocol.FlightService/DoAction"},
		func(any, grpc.ServerStream) error { boom(); return nil })
	if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "DoAction") {
		t.Errorf("stream: %v, want INTERNAL", err)
	}
	// Without a panic the handler's own result passes through.
	want := status.Error(codes.NotFound, "x")
	if err := recoverStream(log)(nil, nil, &grpc.StreamServerInfo{FullMethod: "/x/DoGet"},
		func(any, grpc.ServerStream) error { return want }); err != want {
		t.Errorf("stream without panic: %v", err)
	}
}

// A full disk is RESOURCE_EXHAUSTED, a bad piece INVALID_ARGUMENT, another
// I/O failure INTERNAL (issue 16, Low 15).
func TestUploadStatusCodes(t *testing.T) {
	full := &safetensors.Error{Path: "/s/u.safetensors", Kind: safetensors.ErrIO, Msg: "write failed", Err: syscall.ENOSPC}
	quota := fmt.Errorf("storing: %w", syscall.EDQUOT)
	eio := &safetensors.Error{Path: "/s/u.safetensors", Kind: safetensors.ErrIO, Msg: "fsync", Err: syscall.EIO}
	bad := fmt.Errorf("%w: tensor \"w\": piece at byte 4, expected 0", tensors.ErrIPC)
	cases := []struct {
		err  error
		want codes.Code
	}{
		{full, codes.ResourceExhausted},
		{quota, codes.ResourceExhausted},
		{eio, codes.Internal},
		{bad, codes.InvalidArgument},
	}
	for _, c := range cases {
		got := uploadStatus("u", c.err)
		if status.Code(got) != c.want || !strings.Contains(got.Error(), "upload u") {
			t.Errorf("uploadStatus(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if codeOf(fmt.Errorf("result: %w", syscall.ENOSPC)) != codes.ResourceExhausted {
		t.Error("codeOf(ENOSPC) is not RESOURCE_EXHAUSTED")
	}
	if !errors.Is(full, syscall.ENOSPC) {
		t.Fatal("safetensors.Error does not unwrap to its cause")
	}
}

func TestLoopback(t *testing.T) {
	for hp, want := range map[string]bool{
		"127.0.0.1:9464": true, "localhost:1": true, "[::1]:9": true, "127.1.2.3:0": true,
		"0.0.0.0:9464": false, ":9464": false, "[::]:9": false, "10.0.0.5:9": false, "example.org:80": false, "bad": false,
	} {
		if got := loopback(hp); got != want {
			t.Errorf("loopback(%q) = %v, want %v", hp, got, want)
		}
	}
}
