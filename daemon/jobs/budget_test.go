package jobs

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npsfuse/npsfuse/daemon/store"
)

// TestSharedMemoryResultsCount covers issue 16 Medium 10: a shared-memory
// result (RAM) counts against memory_budget while it is written and until
// its client releases it; a merge that cannot fit waits, and one larger
// than the whole budget fails at once.
func TestSharedMemoryResultsCount(t *testing.T) {
	f := newFixture(t, 2)
	paths, _, metas := f.family(t, 2, 5)
	var total, largest int64
	for _, m := range metas {
		total, largest = total+m.Bytes(), max(largest, m.Bytes())
	}
	need := 2*largest + total // working memory + the result in shared memory
	cfg := map[string]any{"merge_method": "task_arithmetic", "base_model": paths[0],
		"models": []any{map[string]any{"model": paths[1]}, map[string]any{"model": paths[2]}}}
	shm := map[string]any{"config": cfg, "result": map[string]any{"shm": true}}

	f.r.budget = NewBudget(need + total/2) // room for one shm merge, not for one more beside a held result
	first := f.wait(t, submit(t, f, "merge", shm).ID)
	if first.State != store.Done {
		t.Fatalf("first merge: %s %s", first.State, first.Error)
	}
	if got := f.r.budget.Used(); got != total {
		t.Fatalf("after the first merge %d bytes are counted, want its result's %d", got, total)
	}
	// A file result needs working memory only: it runs beside the held result.
	file := f.wait(t, submit(t, f, "merge", map[string]any{"config": cfg}).ID)
	if file.State != store.Done {
		t.Fatalf("file merge: %s %s", file.State, file.Error)
	}
	second := submit(t, f, "merge", shm)
	// Until a worker takes it up the job is queued (a loaded machine may
	// take a while); then it must stay running, waiting for memory.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if st, _ := f.r.Status(second.ID); st.State != store.Queued {
			break
		}
	}
	time.Sleep(300 * time.Millisecond)
	if st, _ := f.r.Status(second.ID); st.State != store.Running {
		t.Fatalf("second shm merge is %s while the first result is held; want running (waiting for memory)", st.State)
	}
	if _, err := f.r.Release(first.ID); err != nil {
		t.Fatal(err)
	}
	if st := f.wait(t, second.ID); st.State != store.Done {
		t.Fatalf("second merge after the release: %s %s", st.State, st.Error)
	}
	if err := f.r.Delete(second.ID); err != nil {
		t.Fatal(err)
	}
	if got := f.r.budget.Used(); got != 0 {
		t.Fatalf("%d bytes still counted after every result was released or deleted", got)
	}

	f.r.budget = NewBudget(need - 1)
	st := f.wait(t, submit(t, f, "merge", shm).ID)
	if st.State != store.Failed || !strings.Contains(st.Error, "memory_budget") {
		t.Fatalf("a shm merge larger than the budget: %s %q", st.State, st.Error)
	}
}

// writeMisaligned writes a safetensors file whose float32 tensor "w" starts
// at an odd offset (after a 3-byte tensor), as a foreign writer may lay
// it out: the daemon copies it into aligned memory to merge it.
func writeMisaligned(t *testing.T, path string, w []float32) {
	t.Helper()
	hdr := fmt.Sprintf(`{"a.pad":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"w":{"dtype":"F32","shape":[%d],"data_offsets":[3,%d]}}`, len(w), 3+4*len(w))
	for (8+len(hdr))%8 != 0 {
		hdr += " "
	}
	buf := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	buf = append(append(buf, hdr...), 1, 2, 3)
	for _, v := range w {
		buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
	}
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMisalignedCopiesCount covers the other half of issue 16 Medium 10:
// the aligned copies of misaligned inputs are reserved before they are
// made (they were allocated outside the budget).
func TestMisalignedCopiesCount(t *testing.T) {
	f := newFixture(t, 1)
	const n = 1 << 16
	var paths []string
	for k := 0; k < 3; k++ {
		w := make([]float32, n)
		for i := range w {
			w[i] = float32(k) + float32(i%7)
		}
		p := filepath.Join(f.root, fmt.Sprintf("mis%d.safetensors", k))
		writeMisaligned(t, p, w)
		paths = append(paths, p)
	}
	cfg := map[string]any{"merge_method": "task_arithmetic", "base_model": paths[0],
		"models": []any{map[string]any{"model": paths[1]}, map[string]any{"model": paths[2]}}}
	working := int64(2 * 4 * n) // the largest output tensor, twice
	copies := int64(3 * 4 * n)  // "w" of the base and both models
	f.r.budget = NewBudget(working + copies - 1)
	st := f.wait(t, submit(t, f, "merge", map[string]any{"config": cfg}).ID)
	if st.State != store.Failed || !strings.Contains(st.Error, "memory_budget") {
		t.Fatalf("merge needing %d bytes of copies within a budget short of them: %s %q", copies, st.State, st.Error)
	}
	f.r.budget = NewBudget(working + copies)
	if st := f.wait(t, submit(t, f, "merge", map[string]any{"config": cfg}).ID); st.State != store.Done {
		t.Fatalf("merge within the budget: %s %s", st.State, st.Error)
	}
}
