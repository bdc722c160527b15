//go:build linux

package stream

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"syscall"
	"testing"
	"unsafe"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
)

// resident is the number of b's bytes in memory (mincore(2), whole pages).
func resident(t *testing.T, b []byte) int64 {
	t.Helper()
	if len(b) == 0 {
		return 0
	}
	page := os.Getpagesize()
	vec := make([]byte, (len(b)+page-1)/page)
	if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(vec)))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	var n int64
	for _, v := range vec {
		if v&1 != 0 {
			n += int64(page)
		}
	}
	return n
}

// The merged vocabulary's tensors are built when their tensor is merged
// and dropped after it (issue 14: peak memory independent of the model):
// during a merge of three vocabulary tensors, the buffers in memory (by
// mincore, not by the stage's own count) are the current tensor's, one per
// model; a whole-model method (ties with scope: global, which reads every
// tensor before merging the first) has them all from its first job on.
// Either way the output is bit for bit the merge of checkpoints stored
// already in the merged vocabulary.
func TestVocabularyBuffersLiveForTheirJobOnly(t *testing.T) {
	const width = 4096 // a row: 16 KiB, four pages
	vocabNames := []string{"lm_head.weight", "model.embed_tokens.weight", "transformer.wte.weight"}
	rng := rand.New(rand.NewPCG(7, 14))
	randRows := func(rows int) []float32 {
		v := make([]float32, rows*width)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	mat := func(rows int, v []float32) safetensors.Tensor {
		return safetensors.Tensor{DType: safetensors.F32, Shape: []int64{int64(rows), width}, Data: encode(v, safetensors.F32)}
	}
	// The base has tokens t0..t2, the fine-tune t1, t0, t2, t3 (stored in
	// that order); the union's t3 takes, in the base, the fine-tune's row.
	b, f, pb, pf := tensors{}, tensors{}, tensors{}, tensors{}
	for _, name := range vocabNames {
		bv, fv := randRows(3), randRows(4)
		b[name], f[name] = mat(3, bv), mat(4, fv)
		row := func(v []float32, r int) []float32 { return v[r*width : (r+1)*width] }
		pb[name] = mat(4, slices.Concat(row(bv, 0), row(bv, 1), row(bv, 2), row(fv, 3)))
		pf[name] = mat(4, slices.Concat(row(fv, 1), row(fv, 0), row(fv, 2), row(fv, 3)))
	}
	b["model.layers.0.mlp.weight"] = mat(2, randRows(2))
	f["model.layers.0.mlp.weight"] = mat(2, randRows(2))
	pb["model.layers.0.mlp.weight"], pf["model.layers.0.mlp.weight"] = b["model.layers.0.mlp.weight"], f["model.layers.0.mlp.weight"]
	_, base, fts := setup(t, b, []tensors{f, pb, pf}, 1)
	ft, permBase, permFT := fts[0], fts[1], fts[2]
	vocab, _ := json.Marshal(map[string]any{"size": 4, "tokens": 4,
		"models":   []any{map[string]any{"path": base, "rows": []int{0, 1, 2, -1}}, map[string]any{"path": ft, "rows": []int{1, 0, 2, 3}}},
		"defaults": []any{map[string]any{"row": 3, "from": []any{[]int{1, 3}}}}})
	one := int64(4 * width * 4) // one model's buffer of one tensor
	for _, c := range []struct {
		name, method, params, extra string
		whole                       bool
	}{
		{"task arithmetic, tensor by tensor", "task_arithmetic", "weight: 0.5", "", false},
		{"ties, scope global", "ties", "weight: 0.5, density: 0.5", "scope: global\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var during []int64 // bytes of the buffers in memory during each job
			var nbufs int
			vocabHook = func(s *vocabStage, job int) {
				var n int64
				for _, buf := range s.all {
					n += resident(t, buf.mem)
				}
				during = append(during, n)
				nbufs = len(s.all)
			}
			defer func() { vocabHook = nil }()
			text := yamlConfig(c.method, base, []string{ft}, c.params, nil, c.extra+"tokenizer_source: union\nnpsfuse_vocabulary: "+string(vocab)+"\n")
			_, out, err := run(t, context.Background(), t.TempDir(), text, Options{})
			if err != nil {
				t.Fatal(err)
			}
			// Jobs in name order: lm_head, embed_tokens, the layer, wte.
			want := []int64{2 * one, 2 * one, 0, 2 * one}
			if c.whole {
				want = []int64{6 * one, 4 * one, 2 * one, 2 * one}
			}
			if nbufs != 6 || !slices.Equal(during, want) {
				t.Errorf("%d buffers; in memory during each job %v bytes, want %v (one model's tensor: %d)", nbufs, during, want, one)
			}
			_, refOut, err := run(t, context.Background(), t.TempDir(), yamlConfig(c.method, permBase, []string{permFT}, c.params, nil, c.extra), Options{})
			if err != nil {
				t.Fatal(err)
			}
			got, wantT := readAll(t, out), readAll(t, refOut)
			for name, w := range wantT {
				if g := got[name]; !slices.Equal(g.Data, w.Data) || !slices.Equal(g.Shape, w.Shape) {
					t.Errorf("%s differs from the merge of the checkpoints already in the merged vocabulary", name)
				}
			}
		})
	}
}
