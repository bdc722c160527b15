package merge

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// prepareAllThenMerge is the order Run used before the groups: every unit
// prepared, then every chunk merged.
func prepareAllThenMerge(t *testing.T, method string, p Params, ts []Tensor) error {
	t.Helper()
	e, err := newEngine(registry[method], p, ts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.prepareAll(); err != nil {
		return err
	}
	return e.mergeChunks(e.chunks)
}

// TestGroupsBitForBit checks that Run, which prepares and merges group by
// group, writes every method's outputs bit for bit as preparing every unit
// first does: with one unit per group, with mixed groups and with one
// group, per tensor and globally, at two thread counts.
func TestGroupsBitForBit(t *testing.T) {
	defer func(b int64) { interleaveBytes = b }(interleaveBytes)
	shapes := [][]int{{7}, {50, 100}, {3, 2*parallel.Chunk + 3}, {9, 4, 3, 3}, {20, 64}, {11}}
	for _, method := range Methods() {
		for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
			r := rand.New(rand.NewPCG(21, 22))
			ts := randomMerge(r, tensor.F32, shapes, modelsFor(method))
			ts[1].Transposed = true
			p := testParams(method)
			p.Density, p.Lambda, p.Seed, p.Scope = 0.4, 0.7, 3, scope
			if s, ok := methodSpecs[method]; ok && !s.Reads("scope") {
				p.Scope = ScopeTensor
			}
			if err := prepareAllThenMerge(t, method, p, ts); err != nil {
				t.Logf("%s: %v", method, err) // a method this input does not suit
				continue
			}
			want := outputs(ts)
			for _, budget := range []int64{1, 8 << 10, 64 << 20} {
				for _, threads := range []int{1, 3} {
					interleaveBytes = budget
					p.Pool = parallel.Pool{Threads: threads}
					for i := range ts {
						ts[i].Out = tensor.Alloc(ts[i].Base.Len(), tensor.F32)
					}
					if err := Run(method, p, ts); err != nil {
						t.Fatalf("%s: %v", method, err)
					}
					for i, got := range outputs(ts) {
						if !slices.Equal(got, want[i]) {
							t.Fatalf("%s scope %v, group budget %d, %d threads: tensor %q differs",
								method, p.Scope, budget, threads, ts[i].Name)
						}
					}
				}
			}
		}
	}
}

// TestGroupsUnitGroups checks the grouping: consecutive units up to the
// budget, a unit larger than the budget alone.
func TestGroupsUnitGroups(t *testing.T) {
	defer func(b int64) { interleaveBytes = b }(interleaveBytes)
	r := rand.New(rand.NewPCG(1, 1))
	// 2 models: 16 B per entry.
	ts := randomMerge(r, tensor.F32, [][]int{{10}, {10}, {100}, {5}, {5}, {5}}, 2)
	e, err := newEngine(registry["ties"], Params{Density: 0.5, Lambda: 1}, ts)
	if err != nil {
		t.Fatal(err)
	}
	interleaveBytes = 16 * 25
	got := e.unitGroups()
	want := [][]int{{0, 1}, {2}, {3, 4, 5}}
	if len(got) != len(want) {
		t.Fatalf("groups %v, want %v", got, want)
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("groups %v, want %v", got, want)
		}
	}
}

// TestGroupsFirstError checks that a bad input in a later tensor is
// reported with the same message as when every unit was prepared first.
func TestGroupsFirstError(t *testing.T) {
	defer func(b int64) { interleaveBytes = b }(interleaveBytes)
	interleaveBytes = 1
	for _, method := range []string{"ties", "pcb", "della", "task_arithmetic"} {
		mk := func() []Tensor {
			r := rand.New(rand.NewPCG(5, 6))
			ts := randomMerge(r, tensor.F32, [][]int{{50, 100}, {40, 30}, {30, 20}}, 2)
			ts[1].Models[1].F32[77] = float32(math.NaN())
			ts[2].Base.F32[3] = float32(math.Inf(1))
			return ts
		}
		p := testParams(method)
		p.Density, p.Lambda = 0.5, 1
		want := prepareAllThenMerge(t, method, p, mk())
		got := Run(method, p, mk())
		if want == nil || got == nil || got.Error() != want.Error() {
			t.Fatalf("%s: error %v, want %v", method, got, want)
		}
	}
}
