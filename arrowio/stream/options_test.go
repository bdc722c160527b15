package stream

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/parallel"
)

// TestRunOnProgress: the callback sees every output tensor once, in
// order, with the total, and the CLI's text progress is still written.
func TestRunOnProgress(t *testing.T) {
	base, models := family(7, withDType(defaultSpecs, safetensors.F32), 2)
	root, bp, paths := setup(t, base, models, 0)
	var got [][2]int64
	var text lockedBuffer
	_, _, err := run(t, context.Background(), root, yamlConfig("ties", bp, paths, "density: 0.5", nil, ""),
		Options{Progress: &text, OnProgress: func(done, total int64) { got = append(got, [2]int64{done, total}) }})
	if err != nil {
		t.Fatal(err)
	}
	n := int64(len(base))
	if int64(len(got)) != n {
		t.Fatalf("%d progress calls, want %d: %v", len(got), n, got)
	}
	for i, g := range got {
		if g != [2]int64{int64(i + 1), n} {
			t.Fatalf("call %d: %v, want [%d %d]", i, g, i+1, n)
		}
	}
	if text.Len() == 0 {
		t.Error("no text progress written")
	}
}

// TestConcurrentRunsWithOwnThreadCounts: two streaming merges with
// different Options.Threads in one process at once (run with -race) write
// the same bits as one run alone; the process default is left alone.
func TestConcurrentRunsWithOwnThreadCounts(t *testing.T) {
	base, models := family(9, withDType(defaultSpecs, safetensors.BF16), 3)
	root, bp, paths := setup(t, base, models, 0)
	text := yamlConfig("dare_ties", bp, paths, "density: 0.4", nil, "seed: 5\n")
	before := parallel.Threads()
	cfg := mustParse(t, text)
	one := func(dir string, threads int) (tensorsOut tensors, err error) {
		if _, err = Run(context.Background(), cfg, Options{OutDir: filepath.Join(root, dir), Threads: threads}); err != nil {
			return nil, err
		}
		return readAll(t, filepath.Join(root, dir)), nil
	}
	alone, err := one("alone", 1)
	if err != nil {
		t.Fatal(err)
	}
	outs := make([]tensors, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, th := range []int{3, 1} {
		wg.Go(func() { outs[i], errs[i] = one("run"+string(rune('a'+i)), th) })
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		assertEqual(t, outs[i], alone)
	}
	if parallel.Threads() != before {
		t.Errorf("Run changed the process default thread count: %d, was %d", parallel.Threads(), before)
	}
}

// lockedBuffer is an io.Writer safe for the progress writer.
type lockedBuffer struct {
	mu sync.Mutex
	n  int
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += len(p)
	return len(p), nil
}

// Len is the number of bytes written.
func (b *lockedBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}
