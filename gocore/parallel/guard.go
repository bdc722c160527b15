package parallel

import (
	"runtime/debug"

	"github.com/npsfuse/npsfuse/gocore/fault"
)

// ErrInputChanged is what Guard returns for a memory fault: a mapped input
// file was truncated (or replaced in place) while it was being read.
var ErrInputChanged = fault.New(fault.InvalidInput,
	"an input file changed while it was being read (truncated or rewritten in place, as saving a checkpoint over itself does); nothing was written: run again once the file is complete")

// Guard runs fn with memory faults turned into panics on the calling
// goroutine (ForN does the same on its workers), and returns a fault —
// the signature of a mapped file that shrank under the reader — as
// ErrInputChanged instead of letting SIGBUS end the process. Other panics
// pass through unchanged.
func Guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(interface{ Addr() uintptr }); ok {
				err = ErrInputChanged
				return
			}
			panic(r)
		}
	}()
	return fn()
}
