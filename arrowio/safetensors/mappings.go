package safetensors

import (
	"sync"
	"unsafe"
)

// mappings holds the live read-only file mappings made by Open (keyed by
// their start address), so that a caller holding a slice of one can find the
// mapping's ends (MappingOf) before it widens page advice around the slice.
var mappings struct {
	sync.Mutex
	live map[uintptr][]byte
}

// register records buf, a mapping Open made.
func register(buf []byte) {
	if len(buf) == 0 {
		return
	}
	mappings.Lock()
	defer mappings.Unlock()
	if mappings.live == nil {
		mappings.live = map[uintptr][]byte{}
	}
	mappings.live[uintptr(unsafe.Pointer(unsafe.SliceData(buf)))] = buf
}

// unregister forgets buf before it is unmapped.
func unregister(buf []byte) {
	if len(buf) == 0 {
		return
	}
	mappings.Lock()
	defer mappings.Unlock()
	delete(mappings.live, uintptr(unsafe.Pointer(unsafe.SliceData(buf))))
}

// MappingOf returns the whole read-only file mapping that holds b (a
// non-empty slice from Bytes or Tensor of a File opened by Open and not yet
// closed), or nil when b lies in no such mapping (a file read into memory,
// OpenBytes, a closed file, or memory of another kind). The result aliases
// the file's pages: it must only be read, and only while the File is open.
// Cost: one pass over the open files' mappings.
func MappingOf(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	end := p + uintptr(len(b))
	mappings.Lock()
	defer mappings.Unlock()
	for start, m := range mappings.live {
		if p >= start && end <= start+uintptr(len(m)) {
			return m
		}
	}
	return nil
}
