//go:build unix

package checkpoint

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRegularOnlyNeverBlocks: a FIFO where config.json, an index or a
// tokenizer file is expected (swapped in after the input check) is refused
// at once instead of blocking the open forever (issue 16, Medium 9).
func TestRegularOnlyNeverBlocks(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	for _, d := range []string{src, dst} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name string
		run  func() error
	}{
		{"config.json", func() error { return CopyConfig(src, dst, "float32") }},
		{"tokenizer.json", func() error { return CopyConfig(src, dst, "float32") }},
		{IndexFile, func() error { _, _, err := shardFiles(src); return err }},
	}
	for _, c := range cases {
		p := filepath.Join(src, c.name)
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- c.run() }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") || !strings.Contains(err.Error(), c.name) {
				t.Fatalf("%s as a FIFO: %v", c.name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s as a FIFO: blocked", c.name)
		}
		os.Remove(p)
		if c.name == "config.json" { // the next case needs a valid one
			if err := os.WriteFile(p, []byte(`{"model_type": "x"}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if b, err := ReadRegular(filepath.Join(src, "config.json")); err != nil || !strings.Contains(string(b), "model_type") {
		t.Fatalf("a regular file: %q %v", b, err)
	}
}
