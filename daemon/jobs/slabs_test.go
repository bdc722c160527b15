package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
)

func TestSubmitMany(t *testing.T) {
	f := newFixture(t, 2)
	paths, _, _ := f.family(t, 1, 7)
	good := func() json.RawMessage {
		raw, _ := json.Marshal(map[string]any{"config": map[string]any{"merge_method": "task_arithmetic",
			"base_model": paths[0], "models": []any{map[string]any{"model": paths[1]}}}})
		return raw
	}
	cases := []struct {
		name    string
		reqs    []Request
		wantErr error
		inErr   string // the error names the culprit
		stored  int    // jobs in the store afterwards (cumulative)
	}{
		{name: "empty", reqs: nil, wantErr: ErrInvalid, inErr: "no jobs"},
		{name: "unknown type refuses the batch", reqs: []Request{{Type: "merge", Spec: good()}, {Type: "teleport"}},
			wantErr: ErrInvalid, inErr: "jobs[1] (teleport)"},
		{name: "bad spec refuses the batch", reqs: []Request{{Type: "merge", Spec: json.RawMessage(`{"bogus":1}`)}, {Type: "merge", Spec: good()}},
			wantErr: ErrInvalid, inErr: "jobs[0] (merge)"},
		{name: "three jobs", reqs: []Request{{Type: "merge", Spec: good()}, {Type: "merge", Spec: good(), Key: "k"}, {Type: "merge", Spec: good()}},
			stored: 3},
		{name: "retry finds the keyed job", reqs: []Request{{Type: "merge", Spec: good(), Key: "k"}}, stored: 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, existed, err := f.r.SubmitMany(c.reqs)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.inErr) {
					t.Fatalf("err %v, want %v naming %q", err, c.wantErr, c.inErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				for i, j := range got {
					if st := f.wait(t, j.ID); st.State != store.Done {
						t.Errorf("jobs[%d] (job %d): %s %s", i, j.ID, st.State, st.Error)
					}
					if existed[i] != (c.reqs[i].Key != "" && c.name == "retry finds the keyed job") {
						t.Errorf("jobs[%d]: existed = %v", i, existed[i])
					}
				}
			}
			if n := len(mustList(t, f)); n != c.stored {
				t.Errorf("%d jobs stored, want %d", n, c.stored)
			}
		})
	}
}

// slabMetas is a tensor set above tensors.SmallFile (recycled) or below.
func slabMetas(big bool) []tensors.Meta {
	n := int64(64)
	if big {
		n = 1 << 19 // 2 MiB of float32
	}
	return []tensors.Meta{{Name: "w", DType: safetensors.F32, Shape: []int64{n}}}
}

func fillWith(v byte) func(int, []byte) error {
	return func(_ int, dst []byte) error {
		for i := range dst {
			dst[i] = v
		}
		return nil
	}
}

func readTensor(t *testing.T, path string) []byte {
	t.Helper()
	src, err := tensors.OpenIPC(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	b, err := src.Bytes("w")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(b)
}

func TestWriteResultRecyclesSlabs(t *testing.T) {
	f := newFixture(t, 1)
	e := f.env
	res := filepath.Join(e.ShmDir, "results")
	p1 := filepath.Join(res, "r1.arrow")
	_, slab, err := e.WriteResult(p1, "cl", slabMetas(true), fillWith(1), false)
	if err != nil || !strings.HasPrefix(slab, "cl-r") {
		t.Fatalf("first result: slab %q, %v", slab, err)
	}
	ino1, _, _ := fileID(p1)
	if err := e.RecycleResult(p1, slab); err != nil {
		t.Fatal(err)
	}
	p2 := filepath.Join(res, "r2.arrow")
	_, slab2, err := e.WriteResult(p2, "cl", slabMetas(true), fillWith(2), false)
	if err != nil || slab2 != slab {
		t.Fatalf("second result: slab %q (want %q), %v", slab2, slab, err)
	}
	if ino2, _, _ := fileID(p2); ino2 != ino1 {
		t.Error("the second result is not in the recycled file")
	}
	if len(e.slabs.entries) != 1 {
		t.Errorf("%d mappings kept, want 1 (reused)", len(e.slabs.entries))
	}
	if b := readTensor(t, p2); b[0] != 2 || b[len(b)-1] != 2 {
		t.Errorf("recycled result holds %d…%d, want 2", b[0], b[len(b)-1])
	}
	// While p2 is not handed back, another result never reuses it.
	p3 := filepath.Join(res, "r3.arrow")
	_, slab3, err := e.WriteResult(p3, "cl", slabMetas(true), fillWith(3), false)
	if err != nil || slab3 == slab {
		t.Fatalf("third result: slab %q while %q is held, %v", slab3, slab, err)
	}
	if b := readTensor(t, p2); b[0] != 2 {
		t.Error("a held result was overwritten")
	}
	// Small results and results without a prefix are plain files.
	for _, c := range []struct {
		name    string
		recycle string
		big     bool
	}{{"small.arrow", "cl", false}, {"plain.arrow", "", true}} {
		if _, s, err := e.WriteResult(filepath.Join(res, c.name), c.recycle, slabMetas(c.big), fillWith(4), false); err != nil || s != "" {
			t.Errorf("%s: slab %q, %v; want a plain file", c.name, s, err)
		}
	}
	// A deleted result's mapping is dropped.
	if err := e.RemoveResult(p3); err != nil {
		t.Fatal(err)
	}
	for _, m := range e.slabs.entries {
		if m.path == p3 {
			t.Error("the mapping of a deleted result is kept")
		}
	}
}

func TestRecycleResultRefusals(t *testing.T) {
	f := newFixture(t, 1)
	e := f.env
	res := filepath.Join(e.ShmDir, "results")
	p := filepath.Join(res, "r.arrow")
	if _, _, err := e.WriteResult(p, "", slabMetas(false), fillWith(1), false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.ShmFreeDir(), "taken.arrow"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		path, slab string
		want       error
		inErr      string
	}{
		{p, "../escape", ErrInvalid, "../escape"},
		{p, "", ErrInvalid, "recycle_as"},
		{filepath.Join(f.root, "m.arrow"), "s1", ErrInvalid, "m.arrow"},
		{p, "taken", ErrInvalid, `"taken" is already free`},
		{filepath.Join(res, "gone.arrow"), "s2", ErrState, "gone.arrow"},
	}
	for _, c := range cases {
		err := e.RecycleResult(c.path, c.slab)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.inErr) {
			t.Errorf("RecycleResult(%s, %q) = %v, want %v naming %q", c.path, c.slab, err, c.want, c.inErr)
		}
	}
}
