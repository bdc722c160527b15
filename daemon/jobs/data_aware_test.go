package jobs

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/daemon/config"
	"github.com/npsfuse/npsfuse/daemon/store"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TestFisherMergeJob: a fisher merge job reads each model's statistics file
// (inside the data roots) and gives, bit for bit, what gocore/merge
// computes in memory with the same Fisher values.
func TestFisherMergeJob(t *testing.T) {
	f := newFixture(t, 1)
	paths, data, metas := f.family(t, 2, 4)
	stats := map[string][]tensor.Vec{}
	var models []any
	for k := 1; k <= 2; k++ {
		file := map[string]safetensors.Tensor{}
		for i, m := range metas {
			v := make([]float32, m.Numel())
			for j := range v {
				v[j] = float32((j*7+k*3+i)%11) / 10 // zeros included: floored
			}
			file[m.Name] = safetensors.Tensor{DType: safetensors.F32, Shape: m.Shape, Data: unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))}
			stats[m.Name] = append(stats[m.Name], tensor.FromF32(v))
		}
		p := filepath.Join(f.root, fmt.Sprintf("fisher%d.safetensors", k))
		if err := safetensors.Save(p, file, nil); err != nil {
			t.Fatal(err)
		}
		models = append(models, map[string]any{"model": paths[k], "parameters": map[string]any{"statistics": p, "weight": float64(k)}})
	}
	cfg := map[string]any{"merge_method": "fisher", "base_model": paths[0], "models": models,
		"parameters": map[string]any{"lambda": 0.9}}
	j := submit(t, f, "merge", map[string]any{"config": cfg, "result": map[string]any{"shm": true}})
	st := f.wait(t, j.ID)
	if st.State != store.Done {
		t.Fatalf("%s: %s", st.State, st.Error)
	}
	got := resultTensors(t, st)
	ts := make([]merge.Tensor, len(metas))
	outs := make([][]float32, len(metas))
	for i, m := range metas {
		outs[i] = make([]float32, m.Numel())
		ts[i] = merge.Tensor{Name: m.Name, Shape: m.IntShape(), Base: tensor.FromF32(data[0][i]), Out: tensor.FromF32(outs[i]),
			Models: []tensor.Vec{tensor.FromF32(data[1][i]), tensor.FromF32(data[2][i])}}
	}
	p := merge.DefaultParams("fisher")
	p.Weights, p.Lambda, p.Statistics = []float32{1, 2}, 0.9, stats
	if err := merge.Run("fisher", p, ts); err != nil {
		t.Fatal(err)
	}
	for i, m := range metas {
		b, err := got.Bytes(m.Name)
		if err != nil {
			t.Fatal(err)
		}
		for k, g := range f32(b) {
			if math.Float32bits(g) != math.Float32bits(outs[i][k]) {
				t.Fatalf("%s[%d] = %v, engine %v", m.Name, k, g, outs[i][k])
			}
		}
	}
}

// A statistics file is read like a model: only inside the data roots.
func TestStatisticsOutsideRootsRefused(t *testing.T) {
	f := newFixture(t, 1)
	paths, _, _ := f.family(t, 1, 5)
	outside := filepath.Join(t.TempDir(), "fisher.safetensors")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{outside, "relative.safetensors"} {
		cfg := map[string]any{"merge_method": "fisher", "base_model": paths[0],
			"models": []any{map[string]any{"model": paths[1], "parameters": map[string]any{"statistics": ref}}}}
		raw, _ := json.Marshal(map[string]any{"config": cfg})
		_, _, err := f.r.Submit("merge", raw, "")
		if !errors.Is(err, config.ErrOutsideRoots) && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want a refusal", ref, err)
		}
		if err == nil {
			continue
		}
		if want := "models[0].parameters.statistics"; !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v does not name %s", ref, err, want)
		}
	}
}
