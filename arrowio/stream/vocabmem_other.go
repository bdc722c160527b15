//go:build !linux

package stream

// vocabReserve allocates n bytes on the Go heap: without Linux's anonymous
// mappings a merged vocabulary tensor keeps its memory from the plan to
// the end of the run (correct, but not released after its job).
func vocabReserve(n int) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	return make([]byte, n), nil
}

// vocabRelease does nothing here (see vocabReserve).
func vocabRelease([]byte) {}

// vocabFree does nothing here: the garbage collector frees the buffer.
func vocabFree([]byte) {}
