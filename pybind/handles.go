package pybind

import (
	"encoding/json"
	"fmt"
	"sync"
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

// keep returns the handle of v, a new object, or err when building it
// failed.
func keep[T any](v T, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	return putHandle(v), nil
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

// withHandle runs f on the object behind h and returns its result as
// JSON ("" for a nil result); errors and panics come back guarded. An
// exported function that only works on a handle is this one call.
func withHandle[T any](h int, f func(T) (any, error)) (out string, err error) {
	defer guard(&err)
	v, err := getHandle[T](h)
	if err != nil {
		return "", err
	}
	r, err := f(v)
	if err != nil || r == nil {
		return "", err
	}
	b, err := json.Marshal(r)
	return string(b), err
}

// newHandle decodes config (strict JSON; errors wrap kind and name what),
// builds the object from it and returns its handle.
func newHandle[C, T any](kind error, what, config string, build func(C) (T, error)) (h int, err error) {
	defer guard(&err)
	var c C
	if err := decodeStrict(kind, what, config, &c); err != nil {
		return 0, err
	}
	return keep(build(c))
}

// Free releases the object behind a handle; unknown handles are ignored.
func Free(h int) {
	handles.Lock()
	delete(handles.objs, h)
	handles.Unlock()
}

// NumHandlesLive reports how many handles are alive (for leak tests).
func NumHandlesLive() int {
	handles.Lock()
	defer handles.Unlock()
	return len(handles.objs)
}
