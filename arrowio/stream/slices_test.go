package stream

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// badSliceConfigs are the slices configs the parser refuses, one problem
// each, every message naming the slice (and source).
func badSliceConfigs() []badConfig {
	src := func(m string, lo, hi int) string { return fmt.Sprintf("{model: %s, layer_range: [%d, %d]}", m, lo, hi) }
	pass := "merge_method: passthrough\nslices:\n"
	ta := "merge_method: task_arithmetic\nbase_model: base\nslices:\n"
	return []badConfig{
		{"slices empty", "merge_method: passthrough\nslices: []\n", []string{"slices must be a non-empty list"}},
		{"slices and models", good + "slices:\n  - sources: [" + src("ft0", 0, 2) + "]\n", []string{"give either models or slices, not both"}},
		{"slice not a mapping", pass + "  - ft0\n", []string{"slices[0] must be a mapping with a sources key"}},
		{"sources missing", pass + "  - {}\n", []string{"slices[0]: sources must be a non-empty list"}},
		{"unknown slice key", pass + "  - sources: [" + src("ft0", 0, 2) + "]\n    layers: 2\n", []string{`slices[0]: unknown key "layers"`}},
		{"unknown source key", pass + "  - sources: [{model: ft0, layer_range: [0, 2], weight: 1}]\n", []string{`slices[0].sources[0]: unknown key "weight"`}},
		{"layer_range missing", pass + "  - sources: [{model: ft0}]\n", []string{"slices[0].sources[0]: layer_range is missing"}},
		{"layer_range one number", pass + "  - sources: [{model: ft0, layer_range: [2]}]\n", []string{"slices[0].sources[0]: layer_range must be two whole numbers"}},
		{"layer_range fractional", pass + "  - sources: [{model: ft0, layer_range: [0, 1.5]}]\n", []string{"slices[0].sources[0]: layer_range must be two whole numbers"}},
		{"layer_range reversed", pass + "  - sources: [" + src("ft0", 0, 2) + "]\n  - sources: [" + src("ft1", 3, 1) + "]\n",
			[]string{"slices[1].sources[0]: layer_range [3, 1] is empty or negative"}},
		{"layer_range negative", pass + "  - sources: [" + src("ft0", -1, 2) + "]\n", []string{"slices[0].sources[0]: layer_range [-1, 2] is empty or negative"}},
		{"source model missing", pass + "  - sources: [{layer_range: [0, 2]}]\n", []string{"slices[0].sources[0]: model is missing"}},
		{"source model does not exist", pass + "  - sources: [" + src("ft9", 0, 2) + "]\n", []string{"slices[0].sources[0]: model ", "ft9 does not exist"}},
		{"source lengths differ", "merge_method: linear\nslices:\n  - sources: [" + src("ft0", 0, 2) + ", " + src("ft1", 0, 3) + "]\n",
			[]string{"slices[0].sources[1]: layer_range [0, 3] spans 3 layers but slices[0].sources[0] spans 2"}},
		{"duplicate source", "merge_method: linear\nslices:\n  - sources: [" + src("ft0", 0, 2) + ", " + src("ft0", 2, 4) + "]\n",
			[]string{"slices[0].sources[1]: model ", "is already slices[0].sources[0]"}},
		{"passthrough of two", pass + "  - sources: [" + src("ft0", 0, 2) + ", " + src("ft1", 0, 2) + "]\n",
			[]string{"slices[0] (passthrough): passthrough merges exactly 1 models, got 2"}},
		{"unknown slice method", pass + "  - sources: [" + src("ft0", 0, 2) + "]\n    merge_method: stack\n", []string{`slices[0]: unknown merge_method "stack"`}},
		{"base missing", "merge_method: ties\nslices:\n  - sources: [" + src("ft0", 0, 2) + ", " + src("ft1", 0, 2) + "]\n",
			[]string{"slices[0]: ties needs a base model"}},
		{"base not a source", ta + "  - sources: [" + src("ft0", 0, 2) + ", " + src("ft1", 0, 2) + "]\n",
			[]string{"slices[0]: base_model ", "is not among the slice's sources"}},
		{"slice parameter out of range", "merge_method: ties\nbase_model: base\nslices:\n  - sources: [" + src("base", 0, 2) + ", " + src("ft0", 0, 2) + "]\n    parameters: {density: 2}\n",
			[]string{"slices[0].parameters.density must lie in (0, 1], got 2"}},
		{"source parameter not a number", ta + "  - sources: [" + src("base", 0, 2) + ", {model: ft1, layer_range: [0, 2], parameters: {weight: heavy}}]\n",
			[]string{"slices[0].sources[1].parameters.weight must be a number, got heavy"}},
		{"slice parameters not a mapping", pass + "  - sources: [" + src("ft0", 0, 2) + "]\n    parameters: [1]\n", []string{"slices[0].parameters must be a mapping"}},
		{"data-aware method", "merge_method: fisher\nbase_model: base\nslices:\n  - sources: [" + src("base", 0, 2) + ", " + src("ft0", 0, 2) + "]\n",
			[]string{"slices[0]: fisher needs each model's statistics"}},
		{"global parameter no slice reads", "merge_method: ties\nbase_model: base\nparameters: {density: 0.5}\nslices:\n  - sources: [" + src("ft0", 0, 2) + "]\n    merge_method: passthrough\n",
			[]string{"parameters.density is not used by the slices' methods (passthrough)"}},
		{"passthrough with another base", "merge_method: passthrough\nbase_model: base\nmodels:\n  - model: ft0\n",
			[]string{"passthrough takes one model, and base_model"}},
	}
}

// layered are the specs of a small model of four layers, named as
// transformers' Llama names them, with an integer buffer in each layer.
func layered(n int) []spec {
	s := []spec{{"model.embed_tokens.weight", safetensors.F32, []int64{10, 8}}}
	for i := range n {
		p := fmt.Sprintf("model.layers.%d.", i)
		s = append(s, spec{p + "mlp.up_proj.weight", safetensors.F32, []int64{12, 8}},
			spec{p + "self_attn.q_proj.weight", safetensors.BF16, []int64{8, 8}},
			spec{p + "input_layernorm.weight", safetensors.F32, []int64{8}},
			spec{p + "rotary.ids", safetensors.I64, []int64{3}})
	}
	return append(s, spec{"model.norm.weight", safetensors.F32, []int64{8}}, spec{"lm_head.weight", safetensors.F32, []int64{10, 8}})
}

// rename is name with its layer index replaced by layer.
func rename(name string, layer int) string {
	parts := strings.Split(name, ".")
	parts[2] = fmt.Sprint(layer)
	return strings.Join(parts, ".")
}

// layerOf is the layer index of a model.layers.N… name, or -1.
func layerOf(name string) int {
	var i int
	if _, err := fmt.Sscanf(name, "model.layers.%d.", &i); err != nil {
		return -1
	}
	return i
}

func sliceFamily(t *testing.T) (root string, base tensors, models []tensors) {
	t.Helper()
	base, models = family(21, layered(4), 3)
	root, _, _ = setup(t, base, models, 2)
	for _, d := range []string{"base", "ft0", "ft1", "ft2"} {
		cfg := `{"model_type": "llama", "num_hidden_layers": 4, "torch_dtype": "float32"}`
		if err := os.WriteFile(filepath.Join(root, d, "config.json"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, base, models
}

// A passthrough frankenmerge: layers 0–2 of ft0, then 1–3 of ft1, every
// tensor its source's bytes (dtypes kept), the embeddings from the first
// slice, the rest from the last, and config.json's layer count 6.
func TestSlicesPassthroughStacksLayers(t *testing.T) {
	root, _, models := sliceFamily(t)
	text := "merge_method: passthrough\nslices:\n  - sources: [{model: ft0, layer_range: [0, 3]}]\n  - sources: [{model: ft1, layer_range: [1, 4]}]\n"
	cfg, err := ParseConfig([]byte(text), root)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "out")
	if _, err := Run(t.Context(), cfg, Options{OutDir: out}); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, out)
	want := tensors{}
	for name, v := range models[0] {
		if l := layerOf(name); l >= 0 && l < 3 || strings.Contains(name, "embed") {
			want[name] = v
		}
	}
	for name, v := range models[1] {
		switch l := layerOf(name); {
		case l >= 1:
			want[rename(name, l-1+3)] = v
		case l < 0 && !strings.Contains(name, "embed"):
			want[name] = v
		}
	}
	assertEqual(t, got, want)
	var c map[string]any
	raw, _ := os.ReadFile(filepath.Join(out, "config.json"))
	if err := json.Unmarshal(raw, &c); err != nil || c["num_hidden_layers"] != 6.0 {
		t.Fatalf("config.json %s (%v): want num_hidden_layers 6", raw, err)
	}
	card, _ := os.ReadFile(filepath.Join(out, "README.md"))
	if !strings.Contains(string(card), "slices:") || !strings.Contains(string(card), "- 1\n            - 4") {
		t.Fatalf("model card without the slices:\n%s", card)
	}
}

// A method per slice and gradients that run over each slice: slice 0 is
// task_arithmetic of the base and ft0 with weight [0, 1] over its two
// layers (layer 0 at t = 0 is the base, layer 1 at t = 1 the full task
// vector), slice 1 linear of ft1 and ft2 (its integer buffers from ft1,
// the first source). Each tensor is merge.Run's result on its sources.
func TestSlicesMethodPerSliceAndGradients(t *testing.T) {
	root, base, models := sliceFamily(t)
	text := `merge_method: task_arithmetic
base_model: base
slices:
  - sources:
      - {model: ft0, layer_range: [0, 2], parameters: {weight: [0, 1]}}
      - {model: base, layer_range: [0, 2]}
  - merge_method: linear
    sources:
      - {model: ft1, layer_range: [2, 4]}
      - {model: ft2, layer_range: [2, 4], parameters: {weight: 3}}
`
	cfg, err := ParseConfig([]byte(text), root)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "out")
	if _, err := Run(t.Context(), cfg, Options{OutDir: out}); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, out)
	runOne := func(method string, p merge.Params, b safetensors.Tensor, ms ...safetensors.Tensor) []float32 {
		mt := merge.Tensor{Name: "x", Shape: []int{len(decode(b.Data, b.DType))}, Base: vecOfTensor(b),
			Out: tensor.Alloc(len(decode(b.Data, b.DType)), tensor.F32)}
		for _, m := range ms {
			mt.Models = append(mt.Models, vecOfTensor(m))
		}
		if err := merge.Run(method, p, []merge.Tensor{mt}); err != nil {
			t.Fatal(err)
		}
		return mt.Out.F32
	}
	ta := merge.DefaultParams("task_arithmetic")
	lin := merge.DefaultParams("linear")
	lin.Weights = []float32{1, 3}
	for name, g := range got {
		var want []float32
		switch l := layerOf(name); {
		case strings.HasSuffix(name, ".ids"):
			src := base
			if l >= 2 {
				src = models[1]
			}
			if !slices.Equal(g.Data, src[name].Data) {
				t.Errorf("%s: integer buffer not copied from its slice's base", name)
			}
			continue
		case l == 0 || strings.Contains(name, "embed"):
			ta.Weights = []float32{0}
			want = runOne("task_arithmetic", ta, base[name], models[0][name])
		case l == 1:
			ta.Weights = []float32{1}
			want = runOne("task_arithmetic", ta, base[name], models[0][name])
		default: // layers 2, 3 and the head: linear of ft1 and ft2
			want = runOne("linear", lin, models[1][name], models[1][name], models[2][name])
		}
		gv := decode(g.Data, g.DType)
		for i := range gv {
			if w := decode(encode([]float32{want[i]}, g.DType), g.DType)[0]; math.Float32bits(gv[i]) != math.Float32bits(w) {
				t.Fatalf("%s[%d] = %v, want %v", name, i, gv[i], w)
			}
		}
	}
	if len(got) != len(base) {
		t.Fatalf("%d tensors out, want %d", len(got), len(base))
	}
	// The same bits whatever the thread count.
	for _, th := range []int{1, 3} {
		o := filepath.Join(root, fmt.Sprint("out", th))
		if _, err := Run(t.Context(), cfg, Options{OutDir: o, Threads: th}); err != nil {
			t.Fatal(err)
		}
		assertEqual(t, readAll(t, o), got)
	}
}

// A layer range past a model's layers is refused before anything is
// written, naming the slice, the source and the model's layer count.
func TestSlicesRangePastTheLayers(t *testing.T) {
	root, _, _ := sliceFamily(t)
	text := "merge_method: passthrough\nslices:\n  - sources: [{model: ft0, layer_range: [0, 3]}]\n  - sources: [{model: ft1, layer_range: [2, 6]}]\n"
	cfg, err := ParseConfig([]byte(text), root)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "out")
	_, err = Run(t.Context(), cfg, Options{OutDir: out})
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "slices[1].sources[0]: layer_range [2, 6] reaches past the 4 layers of") {
		t.Fatalf("err = %v", err)
	}
	if _, serr := os.Stat(out); !os.IsNotExist(serr) {
		t.Fatalf("output left behind: %v", serr)
	}
}

// How a slice merges its sources: slerp's base first whatever the order
// written, task-vector methods without the base among the models, the
// models shared by the slices listed once.
func TestParseSlicesRoles(t *testing.T) {
	root := configRoot(t)
	text := `merge_method: slerp
base_model: base
parameters: {t: [0, 1]}
slices:
  - sources: [{model: ft0, layer_range: [0, 2]}, {model: base, layer_range: [0, 2]}]
  - merge_method: ties
    sources: [{model: base, layer_range: [2, 4]}, {model: ft0, layer_range: [2, 4]}, {model: ft1, layer_range: [2, 4], parameters: {density: 0.5}}]
`
	cfg, err := ParseConfig([]byte(text), root)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, m := range cfg.Models {
		paths = append(paths, filepath.Base(m.Path))
	}
	if !slices.Equal(paths, []string{"ft0", "base", "ft1"}) {
		t.Fatalf("models %v", paths)
	}
	for _, tc := range []struct {
		slice        int
		base         int
		models       []int
		tensorwise   bool
		density1     float64
		methodString string
	}{
		{0, 1, []int{1, 0}, true, 0, "slerp"},
		{1, 0, []int{1, 2}, false, 0.5, "ties"},
	} {
		sm, bad := cfg.sliceMerge(tc.slice, nil)
		if len(bad) > 0 || sm.base != tc.base || !slices.Equal(sm.models, tc.models) || (sm.params.Tensorwise != nil) != tc.tensorwise || cfg.Slices[tc.slice].Method != tc.methodString {
			t.Fatalf("slice %d: %+v %v", tc.slice, sm, bad)
		}
		if tc.density1 != 0 && (sm.params.Densities == nil || sm.params.Densities[1] != tc.density1) {
			t.Fatalf("slice %d: densities %v", tc.slice, sm.params.Densities)
		}
	}
}

// goodSliceConfigs seed the config parser's fuzz target with the forms of
// slices configs it accepts.
var goodSliceConfigs = []string{
	"merge_method: passthrough\nslices:\n  - sources: [{model: ft0, layer_range: [0, 3]}]\n  - sources: [{model: ft1, layer_range: [1, 4], parameters: {scale: [{filter: o_proj, value: 0}, {value: 1.5}]}}]\n",
	"merge_method: slerp\nbase_model: base\nparameters:\n  t:\n    - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}\n    - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}\n    - {value: 0.5}\nslices:\n  - sources:\n      - {model: base, layer_range: [0, 4]}\n      - {model: ft0, layer_range: [0, 4]}\n",
	"merge_method: ties\nbase_model: base\nparameters: {density: 0.5, normalize: true}\nslices:\n  - sources: [{model: base, layer_range: [0, 2]}, {model: ft0, layer_range: [0, 2], parameters: {weight: [0, 1]}}]\n  - merge_method: linear\n    residual_weight: 0.3\n    sources: [{model: ft0, layer_range: [2, 4]}, {model: ft1, layer_range: [2, 4], parameters: {weight: 2}}]\n    parameters: {normalize: false}\n",
	`{"merge_method": "linear", "slices": [{"sources": [{"model": "ft0", "layer_range": [0, 2]}, {"model": "ft1", "layer_range": [2, 4]}]}]}`,
	// Tokenizer keys with slices (the merged vocabulary as npsfuse's Python
	// side writes it: row maps, and default rows per group of sources).
	"merge_method: passthrough\nslices:\n  - sources: [{model: ft0, layer_range: [0, 2]}]\n  - sources: [{model: ft1, layer_range: [2, 4]}]\ntokenizer_source: base\n",
	"merge_method: passthrough\nslices:\n  - sources: [{model: ft0, layer_range: [0, 2]}]\n  - sources: [{model: ft1, layer_range: [2, 4]}]\ntokenizer_source: union\nchat_template: chatml\n" +
		"npsfuse_vocabulary: {size: 4, tokens: 3, models: [{path: ft0, rows: [0, 1, -1]}, {path: ft1, rows: [0, 1, 2]}], slices: [{slice: 0, sources: [0], defaults: [{row: 2, from: []}]}, {slice: 1, sources: [0], defaults: []}]}\n",
	"merge_method: ties\nbase_model: base\nslices:\n  - sources: [{model: base, layer_range: [0, 2]}, {model: ft0, layer_range: [0, 2], parameters: {weight: 1, density: 0.5}}]\n" +
		"tokenizer: {source: union, pad_to_multiple_of: 8, tokens: {<x>: {source: {kind: zero}}}}\n" +
		"npsfuse_vocabulary: {size: 8, tokens: 3, models: [{path: base, rows: [0, 1, -1]}, {path: ft0, rows: [0, -1, 1]}], slices: [{slice: 0, sources: [0, 1], defaults: [{row: 1, from: [[0, 1]]}, {row: 2, from: [[1, 1]]}]}]}\n",
}

// checkSlices is the fuzz target's check of an accepted slices config:
// every slice has sources of equal, non-empty ranges and merges them with
// parameters the method's row accepts for that many models.
func checkSlices(t *testing.T, cfg *Config) {
	t.Helper()
	for i, s := range cfg.Slices {
		if len(s.Sources) == 0 {
			t.Fatalf("slices[%d] accepted without sources", i)
		}
		for _, src := range s.Sources {
			if src.Start < 0 || src.End <= src.Start || src.End-src.Start != s.Sources[0].End-s.Sources[0].Start {
				t.Fatalf("slices[%d]: accepted layer_range [%d, %d]", i, src.Start, src.End)
			}
		}
		sm, bad := cfg.sliceMerge(i, nil)
		if len(bad) > 0 {
			t.Fatalf("slices[%d] accepted with problems %v", i, bad)
		}
		spec, ok := merge.Spec(s.Method)
		if !ok || len(sm.models) < spec.MinModels || spec.MaxModels > 0 && len(sm.models) > spec.MaxModels {
			t.Fatalf("slices[%d]: %s with %d models", i, s.Method, len(sm.models))
		}
		if sm.params.Weights != nil && len(sm.params.Weights) != len(sm.models) {
			t.Fatalf("slices[%d]: %d weights for %d models", i, len(sm.params.Weights), len(sm.models))
		}
	}
}

// The seeds of the fuzz target are accepted: they exercise its checks of
// accepted configs, not only the error paths.
func TestGoodSliceConfigs(t *testing.T) {
	root := configRoot(t)
	for i, text := range goodSliceConfigs {
		cfg, err := ParseConfig([]byte(text), root)
		if err != nil {
			t.Fatalf("seed %d refused: %v", i, err)
		}
		checkSlices(t, cfg)
	}
}
