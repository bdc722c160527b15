package stream

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
)

// mkfifo replaces path by a FIFO.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
}

// unblock opens every FIFO under root for writing (non-blocking), which
// releases a reader stuck in open: a failing test must not hang.
func unblock(root string) {
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeNamedPipe != 0 {
			if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				f.Close()
			}
		}
		return nil
	})
}

// A FIFO named like any file a merge reads is refused up front, naming
// the file, instead of blocking the merge in open or read.
func TestRunRefusesNonRegularInputs(t *testing.T) {
	base, models := family(7, defaultSpecs, 2)
	cases := []struct {
		name   string
		shards int
		method string
		fifo   func(root, base string, models []string) string // the file to replace by a FIFO
	}{
		{"base weights", 1, "ties", func(_, b string, _ []string) string { return filepath.Join(b, checkpoint.SingleFile) }},
		{"model weights", 1, "ties", func(_, _ string, m []string) string { return filepath.Join(m[1], checkpoint.SingleFile) }},
		{"base config.json", 1, "ties", func(_, b string, _ []string) string { return filepath.Join(b, "config.json") }},
		{"base tokenizer", 1, "ties", func(_, b string, _ []string) string { return filepath.Join(b, "tokenizer.json") }},
		{"base shard", 2, "ties", func(_, b string, _ []string) string { return filepath.Join(b, "model-00002-of-00002.safetensors") }},
		{"base index", 2, "ties", func(_, b string, _ []string) string { return filepath.Join(b, checkpoint.IndexFile) }},
		{"statistics", 1, "fisher", func(root, _ string, _ []string) string { return filepath.Join(root, "a.fisher.safetensors") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, b, m := setup(t, base, models, c.shards)
			fifo := c.fifo(root, b, m)
			mkfifo(t, fifo)
			var perModel []string
			global := "density: 0.5"
			if c.method == "fisher" { // fisher does not read density, and refuses it
				perModel = []string{"statistics: " + fifo, "statistics: " + fifo}
				global = ""
			}
			before := entries(t, root)
			done := make(chan error, 1)
			go func() {
				_, _, err := run(t, context.Background(), root, yamlConfig(c.method, b, m, global, perModel, ""), Options{})
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				for stuck := true; stuck; { // the merge may open the FIFO again
					unblock(root)
					select {
					case <-done:
						stuck = false
					case <-time.After(100 * time.Millisecond):
					}
				}
				t.Fatalf("the merge blocked on the FIFO %s", fifo)
			}
			if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), fifo) || !strings.Contains(err.Error(), "FIFO") {
				t.Fatalf("err = %v, want ErrInput naming the FIFO %s", err, fifo)
			}
			assertNothingLeft(t, root, before)
		})
	}
}

func TestInputFiles(t *testing.T) {
	base, _ := family(3, defaultSpecs, 0)
	root := t.TempDir()
	single := writeSingle(t, filepath.Join(root, "single"), base)
	sharded := writeSharded(t, filepath.Join(root, "sharded"), base, 2)
	if err := os.WriteFile(filepath.Join(sharded, "unused.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path string
		want []string // path, then names in its folder
	}{
		{single, []string{single, "config.json", "model.safetensors", "tokenizer.json"}},
		{filepath.Join(single, checkpoint.SingleFile), []string{filepath.Join(single, checkpoint.SingleFile), "config.json", "tokenizer.json"}},
		{sharded, []string{sharded, "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
			checkpoint.IndexFile, "tokenizer.json"}},
	}
	for _, c := range cases {
		got, err := InputFiles(c.path)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{c.want[0]}
		dir := c.path
		if filepath.Ext(dir) == ".safetensors" {
			dir = filepath.Dir(dir)
		}
		for _, n := range c.want[1:] {
			want = append(want, filepath.Join(dir, n))
		}
		if !slices.Equal(got, want) {
			t.Errorf("InputFiles(%s) = %q, want %q", c.path, got, want)
		}
	}
}
