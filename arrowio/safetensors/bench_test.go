package safetensors

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// checksum folds b into a uint64 eight bytes at a time, so both benchmarks
// below touch every byte with the same arithmetic.
func checksum(b []byte) uint64 {
	var s uint64
	for len(b) >= 8 {
		s += binary.LittleEndian.Uint64(b)
		b = b[8:]
	}
	for _, c := range b {
		s += uint64(c)
	}
	return s
}

// BenchmarkReadAll1GiB reads every tensor of a 1 GiB file (64 F32 tensors of
// 4096×1024) two ways in the same run: through Open's mapping (Bytes is
// zero-copy; page faults bring the data in) and through os.ReadFile +
// OpenBytes (one copy into the heap). Both then checksum every byte. The file
// stays in the page cache between iterations, so this measures the warm-cache
// cost of the two access paths, not the disk.
func BenchmarkReadAll1GiB(b *testing.B) {
	const nTensors, rows, cols = 64, 4096, 1024
	const total = nTensors * rows * cols * 4
	path := filepath.Join(b.TempDir(), "big.safetensors")
	infos := make([]TensorInfo, nTensors)
	for i := range infos {
		infos[i] = TensorInfo{Name: fmt.Sprintf("layers.%02d.weight", i), DType: F32, Shape: []int64{rows, cols}}
	}
	w, err := NewWriter(path, infos, nil)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, rows*cols*4)
	for i, in := range infos {
		for j := range chunk {
			chunk[j] = byte(i + j)
		}
		if err := w.WriteTensor(in.Name, chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	sumAll := func(f *File) uint64 {
		var s uint64
		for _, n := range f.Names() {
			data, err := f.Bytes(n)
			if err != nil {
				b.Fatal(err)
			}
			s += checksum(data)
		}
		return s
	}
	ref, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	want := sumAll(ref)
	ref.Close()
	b.Run("mmap", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			f, err := Open(path)
			if err != nil {
				b.Fatal(err)
			}
			if got := sumAll(f); got != want {
				b.Fatalf("checksum %x, want %x", got, want)
			}
			f.Close()
		}
	})
	b.Run("ReadFile", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			raw, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			f, err := OpenBytes(raw, path)
			if err != nil {
				b.Fatal(err)
			}
			if got := sumAll(f); got != want {
				b.Fatalf("checksum %x, want %x", got, want)
			}
		}
	})
}
