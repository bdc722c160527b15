package safetensors

import (
	"bytes"
	"cmp"
	"errors"
	"slices"
	"testing"
)

// FuzzOpenBytes checks that OpenBytes never panics and that whatever it
// accepts is consistent: every tensor's Bytes has the size its dtype and
// shape imply, lies inside the data section at its data_offsets, and the
// tensors tile the data section exactly.
func FuzzOpenBytes(f *testing.F) {
	// Valid files, then one file per validation rule (truncated, header
	// length beyond the file, header over 100 MB, invalid JSON, unknown
	// dtype, offsets out of range, overlapping, shape×dtype mismatch, ...).
	f.Add(goldenBytes())
	for _, c := range goodInputs() {
		f.Add(c.file)
	}
	for _, c := range badInputs() {
		f.Add(c.file)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := OpenBytes(b, "fuzz")
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Path != "fuzz" {
				t.Fatalf("error %v is not an *Error naming the input", err)
			}
			return
		}
		defer file.Close()
		dataStart := file.DataOffset()
		if dataStart < 8 || dataStart > int64(len(b)) {
			t.Fatalf("DataOffset %d outside [8, %d]", dataStart, len(b))
		}
		dataSize := int64(len(b)) - dataStart
		names := file.Names()
		if !slices.IsSorted(names) || len(names) != file.Len() {
			t.Fatalf("Names not sorted or Len mismatch: %q %d", names, file.Len())
		}
		infos := make([]TensorInfo, 0, len(names))
		for _, n := range names {
			info, ok := file.Info(n)
			if !ok || info.Name != n {
				t.Fatalf("Info(%q) = %+v, %v", n, info, ok)
			}
			want, err := ByteSize(info.DType, info.Shape)
			if err != nil {
				t.Fatalf("tensor %q: accepted but ByteSize fails: %v", n, err)
			}
			data, err := file.Bytes(n)
			if err != nil {
				t.Fatalf("Bytes(%q): %v", n, err)
			}
			if int64(len(data)) != want || cap(data) != len(data) || info.ByteLen() != want {
				t.Fatalf("tensor %q: %d bytes (cap %d), info %d, dtype×shape %d", n, len(data), cap(data), info.ByteLen(), want)
			}
			if info.Begin < 0 || info.End > dataSize ||
				!bytes.Equal(data, b[dataStart+info.Begin:dataStart+info.End]) {
				t.Fatalf("tensor %q: range [%d, %d] outside or not matching the %d-byte data section", n, info.Begin, info.End, dataSize)
			}
			if len(data) > 0 && &data[0] != &b[dataStart+info.Begin] {
				t.Fatalf("tensor %q: Bytes is a copy, not a view", n)
			}
			infos = append(infos, info)
		}
		slices.SortFunc(infos, func(a, b TensorInfo) int {
			return cmp.Or(cmp.Compare(a.Begin, b.Begin), cmp.Compare(a.End, b.End))
		})
		var cursor int64
		for _, in := range infos {
			if in.Begin != cursor {
				t.Fatalf("tensor %q begins at %d, previous tensors end at %d", in.Name, in.Begin, cursor)
			}
			cursor = max(cursor, in.End)
		}
		if cursor != dataSize {
			t.Fatalf("tensors cover %d of %d data bytes", cursor, dataSize)
		}
	})
}
