package pybind

import (
	"encoding/json"
	"errors"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/bridge"
	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/stream"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/nps"
)

// pythonExceptions is the one mapping of the error taxonomy (gocore/fault)
// to the exceptions Python users get. Names are builtins or npsfuse's own
// classes (npsfuse._core: ResourceExhaustedError, an OSError and a
// RuntimeError; CancelledError, a RuntimeError). Every kind has a row.
var pythonExceptions = map[fault.Kind]string{
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

// errorTag opens and closes the kind that exportErr puts in front of an
// error's message (ASCII group separator: never part of a message).
const errorTag = "\x1d"

// terse are the sentinels whose text Python's message leaves out (the
// exception's type says it): "invalid merge input: gamma must …" is
// ValueError("gamma must …").
var terse = []error{merge.ErrInput, stream.ErrInput, stream.ErrConfig, checkpoint.ErrCheckpoint,
	checkpoint.ErrOutput, bridge.ErrTensor, nps.ErrInput, ErrSearch}

// exportErr is the form of err that crosses to Python (nil stays nil):
// "\x1d<kind>\x1d<message>", which npsfuse._core.call turns into the
// exception of pythonExceptions. The message is err's text, without a
// leading terse sentinel's.
func exportErr(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if strings.HasPrefix(msg, errorTag) { // already exported
		return err
	}
	for _, s := range terse {
		if p := s.Error() + ": "; strings.HasPrefix(msg, p) && errors.Is(err, s) {
			msg = msg[len(p):]
			break
		}
	}
	return errors.New(errorTag + fault.KindOf(err).String() + errorTag + msg)
}

// ErrorKinds returns the taxonomy's mapping to Python as a JSON object:
// kind name → exception name. npsfuse._core reads it at import.
func ErrorKinds() (out string, err error) {
	defer guard(&err)
	m := make(map[string]string, len(pythonExceptions))
	for k, name := range pythonExceptions {
		m[k.String()] = name
	}
	b, err := json.Marshal(m)
	return string(b), err
}
