package tensors

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestCopyMapped copies from a read-only file mapping (as export_upload
// does from an upload) and from heap memory, at unaligned offsets, with
// and without several goroutines.
func TestCopyMapped(t *testing.T) {
	const size = 13<<20 + 123
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i*7 + i>>13)
	}
	p := filepath.Join(t.TempDir(), "src.bin")
	if err := os.WriteFile(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := mapFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(m)
	cases := []struct {
		name   string
		src    []byte
		lo, hi int
	}{
		{"mapping, whole", m, 0, size},
		{"mapping, unaligned", m, 4097, size - 5},
		{"mapping, one small piece", m, 3, 3 + 1000},
		{"mapping, empty", m, 10, 10},
		{"heap, unaligned", want, 1, size - 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dst := make([]byte, c.hi-c.lo)
			CopyMapped(dst, c.src[c.lo:c.hi])
			if !bytes.Equal(dst, want[c.lo:c.hi]) {
				t.Errorf("copy of [%d, %d) differs", c.lo, c.hi)
			}
			ParallelCopy(dst, c.src[c.lo:c.hi])
			if !bytes.Equal(dst, want[c.lo:c.hi]) {
				t.Errorf("ParallelCopy of [%d, %d) differs", c.lo, c.hi)
			}
		})
	}
}
