package jobs

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/daemon/tensors"
)

// TestNPSInputsUseThePlanner: the NPS jobs match base and model by the
// planner's rule (gocore/plan, as merges do) and report its words.
func TestNPSInputsUseThePlanner(t *testing.T) {
	f := newFixture(t, 1)
	w := tensors.Meta{Name: "w", DType: safetensors.F32, Shape: []int64{4, 3}}
	ids := tensors.Meta{Name: "ids", DType: safetensors.I64, Shape: []int64{2}}
	write := func(name string, metas []tensors.Meta, fill byte) string {
		t.Helper()
		p := filepath.Join(f.root, name+".arrow")
		if _, err := tensors.WriteIPC(p, metas, func(i int, dst []byte) error {
			for j := range dst {
				dst[j] = fill + byte(j%7) // small floats and small ints
			}
			if metas[i].DType == safetensors.F32 {
				for j := 3; j < len(dst); j += 4 {
					dst[j] = 0x3f // exponent of [1, 2)
				}
				if name == "nan" { // a NaN in the model's τ
					copy(dst, []byte{0xff, 0xff, 0xff, 0x7f})
				}
			}
			return nil
		}, false); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := write("base", []tensors.Meta{w, ids}, 1)
	tests := []struct {
		name  string
		model string
		want  string // "" = done
	}{
		{"same ids", write("ok", []tensors.Meta{w, ids}, 1), ""},
		{"missing", write("missing", []tensors.Meta{ids}, 1), `tensor "w" is missing from`},
		{"shape", write("shape", []tensors.Meta{{Name: "w", DType: safetensors.F32, Shape: []int64{3, 4}}, ids}, 1), `tensor "w" has shape`},
		{"extra", write("extra", []tensors.Meta{w, ids, {Name: "x", DType: safetensors.F32, Shape: []int64{2}}}, 1), `"x"`},
		{"ids differ", write("ids", []tensors.Meta{w, ids}, 2), `tensor "ids" (I64) differs between`},
		// Fails after the memory is reserved: the reservation is given back.
		{"nan", write("nan", []tensors.Meta{w, {Name: "ids", DType: safetensors.I64, Shape: []int64{2}}}, 1), `task vector has NaN`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j := submit(t, f, "nps_prune", map[string]any{"base": base, "model": tc.model, "subspaces": 2, "keep": 0.5})
			st := f.wait(t, j.ID)
			if tc.want == "" {
				if st.State != store.Done {
					t.Fatalf("%s %s", st.State, st.Error)
				}
				src := resultTensors(t, st)
				got, _ := src.Bytes("ids")
				want := bytes.Repeat([]byte{0}, 16)
				for j := range want {
					want[j] = 1 + byte(j%7)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("ids = %v, want the base's %v", got, want)
				}
				return
			}
			msg := fmt.Sprint(st.Error)
			if st.State != store.Failed || !strings.HasPrefix(msg, "invalid NPS input: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("got %s %q, want a failure with %q", st.State, msg, tc.want)
			}
			if used := f.r.budget.Used(); used != 0 {
				t.Errorf("%d bytes of the memory budget still held after the failure", used)
			}
		})
	}
}
