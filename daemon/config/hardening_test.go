package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A configuration path that is a folder, a FIFO or missing is refused with
// a message that says which (a FIFO must not block the start).
func TestConfigFileKinds(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, want string
	}{
		{dir, "is a directory"},
		{fifo, "not a regular file"},
		{filepath.Join(dir, "missing.yaml"), "does not exist"},
	}
	for _, c := range cases {
		done := make(chan error, 1)
		go func() {
			_, err := load(t, "--config", c.path)
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
				t.Errorf("--config %s: %v, want ErrConfig saying %q", c.path, err, c.want)
			}
		case <-time.After(10 * time.Second):
			if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				w.Close()
			}
			<-done
			t.Fatalf("--config %s blocked", c.path)
		}
	}
}
