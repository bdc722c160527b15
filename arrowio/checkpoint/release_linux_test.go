package checkpoint

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// mappedPages reports, for each page of b (a page-aligned range of this
// process's memory), whether it is mapped: /proc/self/pagemap's present bit.
func mappedPages(t *testing.T, b []byte) []bool {
	t.Helper()
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Skipf("no pagemap: %v", err)
	}
	defer f.Close()
	page := os.Getpagesize()
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	n := (len(b) + page - 1) / page
	raw := make([]byte, 8*n)
	if _, err := f.ReadAt(raw, int64(start/uintptr(page))*8); err != nil {
		t.Skipf("pagemap read: %v", err)
	}
	out := make([]bool, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(raw[8*i:])>>63 == 1
	}
	return out
}

// Release leaves no page of the file mapped after every tensor was
// populated and released in an order other than the file's: the pages that
// a read fault's fault-around maps for a neighbouring tensor are dropped
// too (without the slack they stayed mapped, and a merge's resident set
// grew with the model). A slice outside any mapping is left alone, and the
// bytes read back unchanged afterwards.
func TestReleaseDropsFaultAroundPages(t *testing.T) {
	page := os.Getpagesize()
	dir := t.TempDir()
	ts := map[string]safetensors.Tensor{}
	want := map[string][]byte{}
	names := []string{"t0", "t1", "t2", "t3", "t4", "t5"}
	for i, n := range names {
		data := make([]byte, (3+5*i)*page+123*i) // unaligned tensor boundaries
		for k := range data {
			data[k] = byte(k*31 + i)
		}
		ts[n] = safetensors.Tensor{DType: safetensors.U8, Shape: []int64{int64(len(data))}, Data: data}
		want[n] = data
	}
	if err := safetensors.Save(filepath.Join(dir, "model.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	ck, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	first, _ := ck.Bytes(names[0])
	m := safetensors.MappingOf(first)
	if m == nil {
		t.Fatal("MappingOf: no mapping for a tensor of an open file")
	}
	for _, n := range []string{"t3", "t0", "t5", "t1", "t4", "t2"} {
		b, _ := ck.Bytes(n)
		Populate(b)
		if !bytes.Equal(b, want[n]) {
			t.Fatalf("%s: bytes differ", n)
		}
		Release(b)
	}
	for i, on := range mappedPages(t, m) {
		if on {
			t.Errorf("page %d of %d still mapped after every tensor was released", i, len(m)/page)
		}
	}
	for _, n := range names {
		if b, _ := ck.Bytes(n); !bytes.Equal(b, want[n]) {
			t.Errorf("%s: bytes differ after Release", n)
		}
	}
	heap := make([]byte, 3*page)
	for i := range heap {
		heap[i] = 7
	}
	if safetensors.MappingOf(heap) != nil {
		t.Error("MappingOf: Go heap memory reported as a file mapping")
	}
	Release(heap[page : 2*page])
	for _, v := range heap {
		if v != 7 {
			t.Fatal("Release changed memory outside any file mapping")
		}
	}
	Release(nil)
	if err := ck.Close(); err != nil {
		t.Fatal(err)
	}
	if safetensors.MappingOf(first) != nil {
		t.Error("MappingOf: a closed file's mapping is still listed")
	}
}
