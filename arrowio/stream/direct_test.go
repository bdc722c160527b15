package stream

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// TestMain runs the package's tests with the direct reader as
// NPSFUSE_TEST_DIRECT says: "always" reads every eligible job directly
// (make test runs the suite once more that way), "never" through the
// mapping; unset, as in a merge (directAuto: freshly written test files
// are in the page cache, so they read through the mapping).
func TestMain(m *testing.M) {
	switch os.Getenv("NPSFUSE_TEST_DIRECT") {
	case "always":
		directMode = directAlways
	case "never":
		directMode = directNever
	}
	os.Exit(m.Run())
}

// withDirect runs f with directMode set to mode.
func withDirect(t *testing.T, mode directModeT, f func()) {
	t.Helper()
	old := directMode
	directMode = mode
	defer func() { directMode = old }()
	f()
}

// outputFiles reads every file of a merge's output folder.
func outputFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, name := range entries(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// The direct reader's merges equal the mapping's byte for byte, output
// files included, for the method families, dtypes (with conversions: copy
// jobs that convert), sharded inputs and a read-ahead window smaller than
// one job (the ring then holds one job at a time).
func TestDirectMatchesMapping(t *testing.T) {
	cases := []struct {
		name, method, global, extra string
		dt                          safetensors.DType
		baseShards                  int
		readAhead                   int64
		wantDirect                  bool
	}{
		{"ties", "ties", "density: 0.3", "", safetensors.F32, 0, 0, true},
		{"dare_ties", "dare_ties", "density: 0.5", "seed: 5\n", safetensors.F32, 0, 0, true},
		{"della sharded base", "della", "density: 0.4, epsilon: 0.1", "seed: 2\n", safetensors.F32, 3, 0, true},
		{"task_arithmetic bf16", "task_arithmetic", "", "", safetensors.BF16, 0, 0, true},
		{"model_stock f16 to bf16", "model_stock", "", "out_dtype: bfloat16\n", safetensors.F16, 0, 0, true},
		{"ties bf16, window of one page", "ties", "density: 0.5", "", safetensors.BF16, 2, 4096, true},
		{"neuro fixed lam2, scope tensor", "neuro", "lam2: 0.5", "scope: tensor\n", safetensors.F32, 0, 0, true},
		{"neuro automatic lam2 (whole model: mapping)", "neuro", "", "", safetensors.F32, 0, 0, false},
		{"ties scope global (whole model: mapping)", "ties", "density: 0.25", "scope: global\n", safetensors.F32, 0, 0, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, models := family(uint64(40+i), withDType(defaultSpecs, c.dt), 3)
			root, basePath, paths := setup(t, base, models, c.baseShards)
			text := yamlConfig(c.method, basePath, paths, c.global, nil, c.extra)
			var want, got map[string][]byte
			withDirect(t, directNever, func() {
				_, out, err := run(t, context.Background(), root, text, Options{ReadAhead: c.readAhead})
				if err != nil {
					t.Fatal(err)
				}
				want = outputFiles(t, out)
				if err := os.RemoveAll(out); err != nil {
					t.Fatal(err)
				}
			})
			before := directJobs.Load()
			withDirect(t, directAlways, func() {
				_, out, err := run(t, context.Background(), root, text, Options{ReadAhead: c.readAhead})
				if err != nil {
					t.Fatal(err)
				}
				got = outputFiles(t, out)
			})
			if n := directJobs.Load() - before; (n > 0) != c.wantDirect {
				t.Fatalf("%d jobs read directly, want direct reading %v", n, c.wantDirect)
			}
			if len(got) != len(want) {
				t.Fatalf("output files %d, want %d", len(got), len(want))
			}
			for name, w := range want {
				if !bytes.Equal(got[name], w) {
					t.Errorf("%s differs between direct and mapped reading", name)
				}
			}
		})
	}
}

// When O_DIRECT is refused, at open or by a read (EINVAL), the reads go
// through the page cache and the merge is the same; a read error or an end
// of file inside a tensor fails the merge, naming the file, and leaves
// nothing behind.
func TestDirectFallbacksAndErrors(t *testing.T) {
	base, models := family(7, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, "")
	var want map[string][]byte
	withDirect(t, directNever, func() {
		_, out, err := run(t, context.Background(), root, text, Options{})
		if err != nil {
			t.Fatal(err)
		}
		want = outputFiles(t, out)
		_ = os.RemoveAll(out)
	})
	oldOpen, oldRead := openDirectRead, preadDirect
	defer func() { openDirectRead, preadDirect = oldOpen, oldRead }()
	var refusals atomic.Int64
	fallbacks := map[string]func(){
		"open refused": func() {
			openDirectRead = func(string) (*os.File, error) { return nil, syscall.EINVAL }
			preadDirect = oldRead
		},
		"read refused": func() {
			openDirectRead = oldOpen
			preadDirect = func(*os.File, []byte, int64) (int, error) { refusals.Add(1); return 0, syscall.EINVAL }
		},
	}
	for name, set := range fallbacks {
		t.Run(name, func(t *testing.T) {
			set()
			withDirect(t, directAlways, func() {
				_, out, err := run(t, context.Background(), root, text, Options{})
				if err != nil {
					t.Fatal(err)
				}
				got := outputFiles(t, out)
				for f, w := range want {
					if !bytes.Equal(got[f], w) {
						t.Errorf("%s differs", f)
					}
				}
				_ = os.RemoveAll(out)
			})
		})
	}
	if refusals.Load() == 0 {
		t.Error("the refusing read was never called")
	}
	failures := []struct {
		name string
		read func(*os.File, []byte, int64) (int, error)
		want string
	}{
		{"i/o error", func(*os.File, []byte, int64) (int, error) { return 0, syscall.EIO }, "input/output error"},
		{"end of file inside a tensor", func(*os.File, []byte, int64) (int, error) { return 0, io.EOF }, "truncated while merging"},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			openDirectRead, preadDirect = oldOpen, f.read
			before := entries(t, root)
			withDirect(t, directAlways, func() {
				_, _, err := run(t, context.Background(), root, text, Options{})
				if err == nil || !strings.Contains(err.Error(), f.want) || !strings.Contains(err.Error(), ".safetensors") {
					t.Fatalf("error %v, want one naming the file and containing %q", err, f.want)
				}
				if f.name == "end of file inside a tensor" && !errors.Is(err, ErrInput) {
					t.Errorf("error %v is not ErrInput", err)
				}
			})
			assertNothingLeft(t, root, before)
		})
	}
}

// A cancelled merge stops the direct reader's goroutines while reads are
// queued (close drains them); Run returns promptly.
func TestDirectCancel(t *testing.T) {
	base, models := family(9, defaultSpecs, 3)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, "")
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	withDirect(t, directAlways, func() {
		_, _, err := run(t, ctx, root, text, Options{ReadAhead: 4096, OnProgress: func(done, _ int64) {
			if calls++; done == 2 {
				cancel()
			}
		}})
		if err == nil || !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want cancelled", err)
		}
	})
}

func TestRingBytes(t *testing.T) {
	cases := []struct {
		spans []inputSpan
		want  int64
	}{
		{nil, 0},
		{[]inputSpan{{off: 0, n: 1}}, 4096},
		{[]inputSpan{{off: 4095, n: 2}}, 8192},
		{[]inputSpan{{off: 8192, n: 4096}, {off: 100, n: 10000}}, 4096 + 12288},
		{[]inputSpan{{off: 5000, n: 0}}, 0},
	}
	for _, c := range cases {
		if got := ringBytes(c.spans); got != c.want {
			t.Errorf("ringBytes(%v) = %d, want %d", c.spans, got, c.want)
		}
	}
}

// The automatic choice reads directly only when the inputs exceed half
// the memory; the environment forces either way, the buffered read first.
func TestDirectPolicy(t *testing.T) {
	for _, c := range []struct {
		inputs, mem int64
		want        bool
	}{
		{10, 0, false}, {10, 30, false}, {15, 30, false}, {16, 30, true}, {1 << 40, 64 << 30, true},
	} {
		if got := tooLargeToCache(c.inputs, c.mem); got != c.want {
			t.Errorf("tooLargeToCache(%d, %d) = %v", c.inputs, c.mem, got)
		}
	}
	base, models := family(11, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, "")
	cases := []struct {
		name       string
		mode       directModeT
		env        map[string]string
		wantDirect bool
	}{
		{"auto, small merge", directAuto, nil, false},
		{"auto, NPSFUSE_DIRECT_READ=1", directAuto, map[string]string{"NPSFUSE_DIRECT_READ": "1"}, true},
		{"always, NPSFUSE_BUFFERED_READ=1", directAlways, map[string]string{"NPSFUSE_BUFFERED_READ": "1", "NPSFUSE_DIRECT_READ": "1"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("NPSFUSE_DIRECT_READ", "")
			t.Setenv("NPSFUSE_BUFFERED_READ", "")
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			before := directJobs.Load()
			withDirect(t, c.mode, func() {
				_, out, err := run(t, context.Background(), root, text, Options{})
				if err != nil {
					t.Fatal(err)
				}
				_ = os.RemoveAll(out)
			})
			if got := directJobs.Load() > before; got != c.wantDirect {
				t.Errorf("read directly: %v, want %v", got, c.wantDirect)
			}
		})
	}
}

// Options.ReserveMemory is asked for the ring before it exists and given
// it back once at the end; a refusal reads through the mapping, with the
// same output.
func TestDirectReservesItsRing(t *testing.T) {
	base, models := family(13, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, "")
	var outputs []map[string][]byte
	for _, refuse := range []bool{false, true} {
		var asked, released int
		var n int64
		opt := Options{ReserveMemory: func(b int64, what string) (func(), error) {
			asked, n = asked+1, b
			if refuse {
				return nil, errors.New("over budget")
			}
			return func() { released++ }, nil
		}}
		before := directJobs.Load()
		withDirect(t, directAlways, func() {
			_, out, err := run(t, context.Background(), root, text, opt)
			if err != nil {
				t.Fatal(err)
			}
			outputs = append(outputs, outputFiles(t, out))
			_ = os.RemoveAll(out)
		})
		direct := directJobs.Load() > before
		if asked != 1 || n <= 0 || n%directAlign != 0 || direct == refuse || released != map[bool]int{false: 1, true: 0}[refuse] {
			t.Fatalf("refuse %v: asked %d times for %d bytes, released %d times, read directly %v", refuse, asked, n, released, direct)
		}
	}
	for name, w := range outputs[0] {
		if !bytes.Equal(outputs[1][name], w) {
			t.Errorf("%s differs between a reserved ring and the refused one", name)
		}
	}
}

// A ring larger than the limit is not made (the merge reads through the
// mapping); within it, or without one, it is.
func TestDirectRingLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.bin")
	if err := os.WriteFile(path, make([]byte, 3*directAlign+100), 0o644); err != nil {
		t.Fatal(err)
	}
	spans := [][]inputSpan{{{path: path, off: 10, n: 3 * directAlign}}, nil}
	need := ringBytes(spans[0]) // 4 pages
	for _, c := range []struct {
		limit int64
		made  bool
	}{{0, true}, {need, true}, {need - 1, false}} {
		r := newDirectReader(spans, 0, c.limit, nil)
		if (r != nil) != c.made {
			t.Fatalf("limit %d: reader made %v, want %v", c.limit, r != nil, c.made)
		}
		if r != nil {
			bufs, err := r.wait(0)
			if err != nil || len(bufs) != 1 || len(bufs[0]) != 3*directAlign {
				t.Fatalf("limit %d: read %d buffers, %v", c.limit, len(bufs), err)
			}
			r.release(0)
			r.close()
		}
	}
}
