package safetensors

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestDirectWritesTheSameFile writes one file set several ways with and
// without Direct, and requires the same bytes: tensors in layout order
// (crossing directBlock several times, the last block partial), in pieces
// through TensorWriter, out of layout order (direct writing turns off at
// the first such write), with O_DIRECT refused at open, and with every
// direct write failing (the ordinary file takes over).
func TestDirectWritesTheSameFile(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	tensors := []Tensor{
		randTensor(r, F32, 3, 5),
		randTensor(r, BF16, 5<<20),   // 10 MiB: crosses the first block
		randTensor(r, U8, 1),         // an odd size
		randTensor(r, F16, 4<<20+3),  // 8 MiB + 6 bytes
		randTensor(r, F32, 0),        // empty
		randTensor(r, I64, 1<<20+17), // 8 MiB + 136 bytes: the last block partial
	}
	infos := make([]TensorInfo, len(tensors))
	for i, tt := range tensors {
		infos[i] = TensorInfo{Name: fmt.Sprintf("t%d", i), DType: tt.DType, Shape: tt.Shape}
	}
	meta := map[string]string{"format": "pt"}
	dir := t.TempDir()
	write := func(name string, direct bool, order []int, pieces int, stillDirect bool) []byte {
		t.Helper()
		path := filepath.Join(dir, name)
		w, err := NewWriter(path, infos, meta)
		if err != nil {
			t.Fatal(err)
		}
		if direct {
			w.Direct()
		}
		for _, i := range order {
			tw, err := w.TensorWriter(infos[i].Name)
			if err != nil {
				t.Fatal(err)
			}
			data := tensors[i].Data
			for k := range pieces {
				lo, hi := len(data)*k/pieces, len(data)*(k+1)/pieces
				if _, err := tw.Write(data[lo:hi]); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
		}
		if on := w.dio != nil && w.dio.f != nil; on != stillDirect {
			t.Fatalf("%s: direct writing on at the end: %v, want %v", name, on, stillDirect)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := dirEntries(t, dir); slices.ContainsFunc(got, func(s string) bool { return filepath.Ext(s) != ".safetensors" }) {
			t.Fatalf("%s: leftovers %v", name, got)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	inOrder := []int{0, 1, 2, 3, 4, 5}
	want := write("plain.safetensors", false, inOrder, 1, false)
	if f, err := openDirect(filepath.Join(dir, "plain.safetensors")); err != nil {
		t.Skipf("O_DIRECT refused on this filesystem: %v", err)
	} else {
		f.Close()
	}
	check := func(name string, got []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the file differs from the one written without Direct (%d vs %d bytes)", name, len(got), len(want))
		}
	}
	check("in order", write("direct.safetensors", true, inOrder, 1, true))
	check("in pieces", write("pieces.safetensors", true, inOrder, 7, true))
	check("out of order", write("shuffled.safetensors", true, []int{0, 1, 3, 2, 5, 4}, 3, false))

	defer func(f func(string) (*os.File, error)) { openDirectFile = f }(openDirectFile)
	openDirectFile = func(string) (*os.File, error) { return nil, errors.New("refused") }
	check("refused at open", write("refused.safetensors", true, inOrder, 1, false))
	// A file that cannot be written: every direct write fails.
	openDirectFile = func(p string) (*os.File, error) { return os.Open(p) }
	check("failing writes", write("failing.safetensors", true, inOrder, 2, false))
}

// TestDirectOnlyBeforeWrites: Direct refuses once a tensor has bytes, and
// Abort with direct writing on leaves nothing behind.
func TestDirectOnlyBeforeWrites(t *testing.T) {
	dir := t.TempDir()
	infos := []TensorInfo{{Name: "a", DType: U8, Shape: []int64{10}}, {Name: "b", DType: U8, Shape: []int64{10}}}
	w, err := NewWriter(filepath.Join(dir, "x.safetensors"), infos, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("a", make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if w.Direct() {
		t.Fatal("Direct after a write: accepted")
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	w, err = NewWriter(filepath.Join(dir, "y.safetensors"), infos, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !w.Direct() {
		t.Skip("O_DIRECT refused on this filesystem")
	}
	if err := w.WriteTensor("a", make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	// A header larger than the direct buffer: refused, written as before.
	many := make([]TensorInfo, 0, 120000)
	for i := range cap(many) {
		many = append(many, TensorInfo{Name: fmt.Sprintf("a.rather.long.tensor.name.%07d", i), DType: U8, Shape: []int64{1}})
	}
	w, err = NewWriter(filepath.Join(dir, "z.safetensors"), many, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.DataOffset() <= directBlock {
		t.Fatalf("header of %d bytes: the test needs one over %d", w.DataOffset(), directBlock)
	}
	if w.Direct() {
		t.Fatal("Direct accepted a header larger than its buffer")
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Fatalf("left behind: %v", got)
	}
}
