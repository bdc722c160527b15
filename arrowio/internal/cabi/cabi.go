// Package cabi builds raw Arrow C Data Interface structs in C memory, with
// any field values, so that tests and fuzzers can feed the import path the
// malformed input a foreign producer might send. It is test support only.
package cabi

/*
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct cabiSchema {
  const char* format; const char* name; const char* metadata; int64_t flags; int64_t n_children;
  struct cabiSchema** children; struct cabiSchema* dictionary;
  void (*release)(struct cabiSchema*); void* private_data;
};
struct cabiArray {
  int64_t length; int64_t null_count; int64_t offset; int64_t n_buffers; int64_t n_children;
  const void** buffers; struct cabiArray** children; struct cabiArray* dictionary;
  void (*release)(struct cabiArray*); void* private_data;
};

static void cabi_release_array(struct cabiArray* a) {
  if (a->buffers) {
    for (int64_t i = 0; i < a->n_buffers; i++) free((void*)a->buffers[i]);
    free((void*)a->buffers);
  }
  a->buffers = NULL;
  a->release = NULL;
}
static void cabi_release_schema(struct cabiSchema* s) {
  free((void*)s->format); free((void*)s->name); free((void*)s->metadata);
  s->format = s->name = s->metadata = NULL;
  s->release = NULL;
}
static void cabi_set_array(struct cabiArray* a, int64_t length, int64_t null_count, int64_t offset, int64_t n_buffers, const void** buffers) {
  a->length = length; a->null_count = null_count; a->offset = offset; a->n_buffers = n_buffers;
  a->n_children = 0; a->buffers = buffers; a->children = NULL; a->dictionary = NULL;
  a->release = cabi_release_array; a->private_data = NULL;
}
static void cabi_set_schema(struct cabiSchema* s, char* format, char* name, char* metadata) {
  s->format = format; s->name = name; s->metadata = metadata; s->flags = 2; s->n_children = 0;
  s->children = NULL; s->dictionary = NULL; s->release = cabi_release_schema; s->private_data = NULL;
}
static int cabi_array_released(struct cabiArray* a) { return a->release == NULL; }
static int cabi_schema_released(struct cabiSchema* s) { return s->release == NULL; }
static void cabi_force_release(struct cabiArray* a, struct cabiSchema* s) {
  if (a->release) a->release(a);
  if (s->release) s->release(s);
}
*/
import "C"

import (
	"encoding/binary"
	"unsafe"
)

// Spec describes one array/schema pair. Every field is written as given,
// consistent or not.
type Spec struct {
	Format    string
	Name      string
	Metadata  map[string]string // encoded per the C Data Interface; nil: none
	Length    int64
	NullCount int64
	Offset    int64
	// Buffers are copied into C memory; a nil entry becomes a NULL pointer.
	Buffers [][]byte
}

// Pairs is a set of pairs laid out as contiguous C arrays.
type Pairs struct {
	arrays  *C.struct_cabiArray
	schemas *C.struct_cabiSchema
	n       int
}

// New allocates the pairs in C memory.
func New(specs []Spec) *Pairs {
	n := len(specs)
	p := &Pairs{n: n}
	p.arrays = (*C.struct_cabiArray)(C.calloc(C.size_t(max(n, 1)), C.size_t(unsafe.Sizeof(C.struct_cabiArray{}))))
	p.schemas = (*C.struct_cabiSchema)(C.calloc(C.size_t(max(n, 1)), C.size_t(unsafe.Sizeof(C.struct_cabiSchema{}))))
	arrs := unsafe.Slice(p.arrays, max(n, 1))
	schs := unsafe.Slice(p.schemas, max(n, 1))
	for i, s := range specs {
		var bufs *unsafe.Pointer
		if len(s.Buffers) > 0 {
			bufs = (*unsafe.Pointer)(C.calloc(C.size_t(len(s.Buffers)), C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))
			bs := unsafe.Slice(bufs, len(s.Buffers))
			for j, b := range s.Buffers {
				if b == nil {
					continue
				}
				m := C.malloc(C.size_t(max(len(b), 1)))
				if len(b) > 0 {
					C.memcpy(m, unsafe.Pointer(&b[0]), C.size_t(len(b)))
				}
				bs[j] = m
			}
		}
		C.cabi_set_array(&arrs[i], C.int64_t(s.Length), C.int64_t(s.NullCount), C.int64_t(s.Offset), C.int64_t(len(s.Buffers)), bufs)
		var meta *C.char
		if s.Metadata != nil {
			enc := encodeMetadata(s.Metadata)
			meta = (*C.char)(C.CBytes(enc))
		}
		C.cabi_set_schema(&schs[i], C.CString(s.Format), C.CString(s.Name), meta)
	}
	return p
}

// Arrays is the address of the first ArrowArray.
func (p *Pairs) Arrays() uintptr { return uintptr(unsafe.Pointer(p.arrays)) }

// Schemas is the address of the first ArrowSchema.
func (p *Pairs) Schemas() uintptr { return uintptr(unsafe.Pointer(p.schemas)) }

// Released reports whether both structs of pair i have been released.
func (p *Pairs) Released(i int) bool {
	a := &unsafe.Slice(p.arrays, p.n)[i]
	s := &unsafe.Slice(p.schemas, p.n)[i]
	return C.cabi_array_released(a) != 0 && C.cabi_schema_released(s) != 0
}

// Free releases whatever the consumer left and frees the struct arrays.
func (p *Pairs) Free() {
	arrs := unsafe.Slice(p.arrays, max(p.n, 1))
	schs := unsafe.Slice(p.schemas, max(p.n, 1))
	for i := 0; i < p.n; i++ {
		C.cabi_force_release(&arrs[i], &schs[i])
	}
	C.free(unsafe.Pointer(p.arrays))
	C.free(unsafe.Pointer(p.schemas))
}

func encodeMetadata(m map[string]string) []byte {
	var b []byte
	b = binary.NativeEndian.AppendUint32(b, uint32(len(m)))
	for k, v := range m {
		b = binary.NativeEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
		b = binary.NativeEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}
