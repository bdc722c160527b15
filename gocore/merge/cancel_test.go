package merge

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// cancelAfter is a context whose Err turns to context.Canceled at its
// n-th call: a cancel at a known point of the merge.
type cancelAfter struct {
	calls atomic.Int64
	n     int64
}

func (c *cancelAfter) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *cancelAfter) Done() <-chan struct{}       { return nil }
func (c *cancelAfter) Value(any) any               { return nil }
func (c *cancelAfter) Err() error {
	if c.calls.Add(1) >= c.n {
		return context.Canceled
	}
	return nil
}

func TestCancelledContextStopsEveryMethod(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, method := range Methods() {
		p := testParams(method)
		ts := randomMerge(rand.New(rand.NewPCG(1, 2)), tensor.F32, testShapes(false), modelsFor(method))
		if _, err := RunReport(method, p, ts); err != nil {
			continue // needs more than the defaults (statistics): not about cancelling
		}
		ts = randomMerge(rand.New(rand.NewPCG(1, 2)), tensor.F32, testShapes(false), modelsFor(method))
		_, err := RunReportContext(done, method, p, ts)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s: err = %v, want context.Canceled", method, err)
		}
		for i, out := range outputs(ts) {
			if slices.ContainsFunc(out, func(x float32) bool { return x != 0 }) {
				t.Errorf("%s: tensor %d written after a cancel before the start", method, i)
			}
		}
	}
}

func TestCancelBetweenChunks(t *testing.T) {
	for _, method := range []string{"task_arithmetic", "ties", "della"} {
		p := testParams(method)
		p.Pool = parallel.Pool{Threads: 1}
		shapes := [][]int{{40, parallel.Chunk}} // 40 chunks, also for the row-wise della
		full := randomMerge(rand.New(rand.NewPCG(3, 4)), tensor.F32, shapes, 3)
		ctx := &cancelAfter{n: 1 << 40}
		if _, err := RunReportContext(ctx, method, p, full); err != nil {
			t.Fatal(err)
		}
		checks := ctx.calls.Load() // the checks of a whole run
		// Cancel at the 21st check from the end: on one thread, in order,
		// the last pass merges 20 of the 40 chunks (rows) and stops.
		ts := randomMerge(rand.New(rand.NewPCG(3, 4)), tensor.F32, shapes, 3)
		ctx = &cancelAfter{n: checks - 19}
		_, err := RunReportContext(ctx, method, p, ts)
		if !errors.Is(err, context.Canceled) || err.Error() != "merge cancelled: context canceled" {
			t.Fatalf("%s: err = %v, want merge cancelled", method, err)
		}
		got, want := outputs(ts)[0], outputs(full)[0]
		same := 0
		for i := range got {
			if got[i] == want[i] {
				same++
			}
		}
		wantSame := 20 * parallel.Chunk
		if method == "ties" {
			// The one-pass selection (selection_onepass.go) merged every
			// chunk before the merge pass, which only skips them.
			wantSame = 40 * parallel.Chunk
		}
		if same != wantSame {
			t.Errorf("%s: %d entries merged after a cancel at chunk 21 of 40, want %d", method, same, wantSame)
		}
		if method != "ties" {
			continue
		}
		// A cancel at the 21st chunk of the one-pass selection (its checks
		// follow the preparation's first one, one per chunk): the error,
		// and nothing written past the 20 chunks merged provisionally.
		ts = randomMerge(rand.New(rand.NewPCG(3, 4)), tensor.F32, shapes, 3)
		ctx = &cancelAfter{n: 1 + 21}
		if _, err := RunReportContext(ctx, method, p, ts); !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: err = %v after a cancel in the one-pass selection, want merge cancelled", method, err)
		}
		if got := outputs(ts)[0]; slices.ContainsFunc(got[20*parallel.Chunk:], func(x float32) bool { return x != 0 }) {
			t.Errorf("%s: entries past chunk 20 written after a cancel in the one-pass selection", method)
		} else if !slices.ContainsFunc(got[:20*parallel.Chunk], func(x float32) bool { return x != 0 }) {
			t.Errorf("%s: the cancel stopped the one-pass selection before chunk 21", method)
		}
	}
}

func TestCancelledTensorwiseMerge(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	v := Values{Global: map[string]any{"lambda": []any{1.0, 0.5}}}
	p, bad := Resolve("task_arithmetic", 3, v)
	if len(bad) > 0 {
		t.Fatal(bad)
	}
	ts := randomMerge(rand.New(rand.NewPCG(5, 6)), tensor.F32, [][]int{{30}, {40}}, 3)
	ts[0].Name, ts[1].Name = "layers.0.w", "layers.1.w"
	if _, err := RunReportContext(done, "task_arithmetic", p, ts); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
