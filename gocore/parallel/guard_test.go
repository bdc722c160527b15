//go:build linux

package parallel

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestGuardTruncatedMapping covers issue 16 Medium 4: reading a mapped file
// that was truncated under the reader, on the caller's goroutine or on a
// worker, is ErrInputChanged, not SIGBUS.
func TestGuardTruncatedMapping(t *testing.T) {
	for _, threads := range []int{1, 4} {
		path := filepath.Join(t.TempDir(), "model.safetensors")
		const size = 64 << 12
		if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, 0); err != nil {
			t.Fatal(err)
		}
		var sum atomic.Int64
		err = Guard(func() error {
			Pool{Threads: threads}.For(64, func(_, i int) { sum.Add(int64(m[i<<12])) })
			return nil
		})
		_ = syscall.Munmap(m)
		if !errors.Is(err, ErrInputChanged) || !strings.Contains(err.Error(), "changed while it was being read") {
			t.Fatalf("threads %d: got %v, want ErrInputChanged", threads, err)
		}
	}
}

// TestWorkerPanicReachesCaller: a panic on a worker is raised again on the
// caller's goroutine (where it can be recovered), after every worker
// stopped, whatever the thread count.
func TestWorkerPanicReachesCaller(t *testing.T) {
	for _, threads := range []int{1, 2, 8} {
		got := func() (r any) {
			defer func() { r = recover() }()
			Pool{Threads: threads}.For(1000, func(_, i int) {
				if i == 617 {
					panic("boom at 617")
				}
			})
			return nil
		}()
		if got != "boom at 617" {
			t.Fatalf("threads %d: recovered %v", threads, got)
		}
		// Guard lets panics that are not memory faults through.
		func() {
			defer func() {
				if r := recover(); r != "other" {
					t.Fatalf("Guard changed a panic: %v", r)
				}
			}()
			_ = Guard(func() error { panic("other") })
		}()
	}
}
