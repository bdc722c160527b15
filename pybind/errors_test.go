package pybind

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/bridge"
	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
)

// TestPythonExceptionOfEveryKind: the one kind → Python exception table,
// every kind listed, as ErrorKinds hands it to npsfuse._core.
func TestPythonExceptionOfEveryKind(t *testing.T) {
	want := map[fault.Kind]string{
		fault.Internal:           "RuntimeError",
		fault.InvalidInput:       "ValueError",
		fault.InvalidTensor:      "TypeError",
		fault.NotFound:           "FileNotFoundError",
		fault.Permission:         "PermissionError",
		fault.ResourceExhausted:  "ResourceExhaustedError",
		fault.Cancelled:          "CancelledError",
		fault.AlreadyExists:      "FileExistsError",
		fault.FailedPrecondition: "RuntimeError",
		fault.Unavailable:        "ConnectionError",
		fault.Unimplemented:      "NotImplementedError",
		fault.DeadlineExceeded:   "TimeoutError",
	}
	js, err := ErrorKinds()
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(js), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(fault.Kinds) {
		t.Errorf("ErrorKinds has %d kinds, want %d", len(got), len(fault.Kinds))
	}
	for _, k := range fault.Kinds {
		if got[k.String()] != want[k] {
			t.Errorf("kind %v → %q, want %q", k, got[k.String()], want[k])
		}
	}
}

// TestExportErr: the kind travels in front of the message, and the
// sentinels Python never showed are left out of it, as before.
func TestExportErr(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"merge input", fmt.Errorf("%w: gamma must lie in [0, 1), got 1", merge.ErrInput), "\x1dinvalid_input\x1dgamma must lie in [0, 1), got 1"},
		{"bad tensor", fmt.Errorf("%w: tensor 3: null buffer", bridge.ErrTensor), "\x1dinvalid_tensor\x1dtensor 3: null buffer"},
		{"output in the way", fmt.Errorf("%w: /o exists and is not empty", checkpoint.ErrOutput), "\x1dalready_exists\x1d/o exists and is not empty"},
		{"search", fmt.Errorf("%w: popsize", ErrSearch), "\x1dinvalid_input\x1dpopsize"},
		{"sentinel not at the start", fmt.Errorf("tensor w: %w: x", merge.ErrInput), "\x1dinvalid_input\x1dtensor w: invalid merge input: x"},
		{"disk full", fmt.Errorf("%w: write: %w", checkpoint.ErrOutput, syscall.ENOSPC), "\x1dresource_exhausted\x1dwrite: no space left on device"},
		{"cancelled", fmt.Errorf("merge cancelled: %w", context.Canceled), "\x1dcancelled\x1dmerge cancelled: context canceled"},
		{"internal", errors.New("boom"), "\x1dinternal\x1dboom"},
	}
	for _, tc := range tests {
		got := exportErr(tc.err)
		if (got == nil) != (tc.want == "") || got != nil && got.Error() != tc.want {
			t.Errorf("%s: exportErr = %q, want %q", tc.name, got, tc.want)
		}
		if got != nil && exportErr(got).Error() != got.Error() {
			t.Errorf("%s: exporting twice changed the error", tc.name)
		}
	}
}

// TestGuardExportsPanics: a recovered panic is an internal error.
func TestGuardExportsPanics(t *testing.T) {
	f := func() (err error) {
		defer guard(&err)
		panic("boom")
	}
	err := f()
	if err == nil || len(err.Error()) < 12 || err.Error()[:10] != "\x1dinternal\x1d" {
		t.Errorf("guard: %q", err)
	}
}
