package merge

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TestConcurrentMergesWithOwnThreadCounts: the thread count travels with
// the call (Params.Pool), so two merges with different counts running at
// the same time in one process, while the process default changes under
// them, give the same bits as each run alone (run with -race: no shared
// state between the calls).
func TestConcurrentMergesWithOwnThreadCounts(t *testing.T) {
	defer parallel.SetThreads(0)
	methods := []string{"dare_ties", "della", "pcb", "tsv"}
	for _, method := range methods {
		run := func(threads int) [][]float32 {
			ts := randomMerge(rand.New(rand.NewPCG(5, 6)), tensor.BF16, testShapes(false), modelsFor(method))
			p := testParams(method)
			p.Density, p.Seed, p.Scope = 0.3, 11, ScopeGlobal
			p.Pool = parallel.Pool{Threads: threads}
			if err := Run(method, p, ts); err != nil {
				t.Errorf("%s, %d threads: %v", method, threads, err)
				return nil
			}
			return outputs(ts)
		}
		alone := run(1)
		if alone == nil {
			continue
		}
		threads := []int{1, 3, 2}
		got := make([][][]float32, len(threads))
		var wg sync.WaitGroup
		for i, th := range threads {
			wg.Go(func() { got[i] = run(th) })
		}
		wg.Go(func() { // the process default must not matter
			for _, n := range []int{4, 1, 0} {
				parallel.SetThreads(n)
			}
		})
		wg.Wait()
		for i, g := range got {
			if !slices.EqualFunc(g, alone, slices.Equal[[]float32]) {
				t.Errorf("%s: the merge on %d threads, run beside others, differs from 1 thread alone", method, threads[i])
			}
		}
	}
}
