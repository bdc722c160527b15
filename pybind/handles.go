package pybind

import (
	"fmt"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/search"
)

// handles keeps Go objects that Python refers to by an integer id between
// calls (decompositions, optimizers). Python frees them explicitly.
var handles = struct {
	sync.Mutex
	next int
	objs map[int]any
}{objs: map[int]any{}}

func putHandle(v any) int {
	handles.Lock()
	defer handles.Unlock()
	handles.next++
	handles.objs[handles.next] = v
	return handles.next
}

func getHandle[T any](h int) (T, error) {
	handles.Lock()
	defer handles.Unlock()
	v, ok := handles.objs[h].(T)
	if !ok {
		var zero T
		return zero, fmt.Errorf("invalid handle %d (freed, or of another kind)", h)
	}
	return v, nil
}

// Free releases the object behind a handle; unknown handles are ignored.
func Free(h int) {
	handles.Lock()
	if d, ok := handles.objs[h].(*search.DE); ok {
		deSchedules.Lock()
		delete(deSchedules.m, d)
		deSchedules.Unlock()
	}
	delete(handles.objs, h)
	handles.Unlock()
}

// NumHandlesLive reports how many handles are alive (for leak tests).
func NumHandlesLive() int {
	handles.Lock()
	defer handles.Unlock()
	return len(handles.objs)
}
