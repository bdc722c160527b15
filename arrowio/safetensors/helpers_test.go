package safetensors

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// stFile hand-assembles a file: the 8-byte little-endian length of header,
// the header, then data.
func stFile(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

// stRaw assembles a file whose length prefix is n, followed by rest.
func stRaw(n uint64, rest string) []byte {
	return append(binary.LittleEndian.AppendUint64(nil, n), rest...)
}

func zeros(n int) []byte { return make([]byte, n) }

// writeTemp stores b in a fresh file named name and returns its path.
func writeTemp(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var allKinds = []error{ErrTruncated, ErrHeaderTooLarge, ErrBadHeader, ErrDType, ErrShape,
	ErrOffsets, ErrSizeMismatch, ErrDuplicate, ErrNotFound, ErrIncomplete, ErrIO, ErrClosed}

// checkErr verifies that err wraps kind and no other sentinel, is an *Error
// naming path (and tensor when hasTensor), and contains msg.
func checkErr(t *testing.T, err, kind error, path string, hasTensor bool, tensor, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("error %q does not wrap %v", err, kind)
	}
	for _, k := range allKinds {
		if k != kind && errors.Is(err, k) {
			t.Errorf("error %q also wraps %v", err, k)
		}
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %q is %T, not *Error", err, err)
	}
	if e.Path != path {
		t.Errorf("Error.Path = %q, want %q", e.Path, path)
	}
	if !strings.Contains(err.Error(), "safetensors: "+path+": ") {
		t.Errorf("error %q does not name the file %q", err, path)
	}
	if e.HasTensor != hasTensor || e.Tensor != tensor {
		t.Errorf("Error tensor = (%v, %q), want (%v, %q)", e.HasTensor, e.Tensor, hasTensor, tensor)
	}
	if hasTensor && !strings.Contains(err.Error(), "tensor "+strconv.Quote(tensor)+": ") {
		t.Errorf("error %q does not name tensor %q", err, tensor)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("error %q does not contain %q", err, msg)
	}
}
