package stream

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

func TestParseConfigStatistics(t *testing.T) {
	root := configRoot(t)
	shapedStats(t, filepath.Join(root, "f0.safetensors"), map[string]safetensors.Tensor{
		"w": {DType: safetensors.F32, Shape: []int64{1}, Data: encode([]float32{1}, safetensors.F32)}})
	good := "merge_method: fisher\nbase_model: base\nmodels:\n" +
		"  - model: ft0\n    parameters: {statistics: f0.safetensors, weight: 2}\n" +
		"  - model: ft1\n    parameters: {statistics: " + filepath.Join(root, "f0.safetensors") + "}\n" +
		"parameters: {fisher_floor: 0.01}\n"
	cfg := mustParseAt(t, good, root)
	if got := cfg.Models[0].Statistics; got != filepath.Join(root, "f0.safetensors") {
		t.Errorf("relative statistics path resolved to %q", got)
	}
	if p := cfg.Params(); p.FisherFloor != 0.01 || p.Alpha != 0.9 {
		t.Errorf("fisher_floor %v, alpha %v", p.FisherFloor, p.Alpha)
	}
	if p := mustParseAt(t, strings.Replace(strings.Replace(good, "fisher_floor: 0.01", "alpha: 0.5", 1), "fisher", "regmean", 1), root).Params(); p.Alpha != 0.5 {
		t.Errorf("alpha %v", p.Alpha)
	}
	cases := []struct{ text, want string }{
		{"merge_method: fisher\nbase_model: base\nmodels:\n  - model: ft0\n",
			"models[0]: fisher needs parameters.statistics"},
		{"merge_method: regmean\nbase_model: base\nmodels:\n  - model: ft0\n    parameters: {statistics: nope.safetensors}\n",
			"models[0].parameters.statistics: " + filepath.Join(root, "nope.safetensors") + " is not a file"},
		{"merge_method: ties\nbase_model: base\nmodels:\n  - model: ft0\n    parameters: {statistics: f0.safetensors}\n",
			"models[0].parameters.statistics is not a parameter of ties (it belongs to fisher, regmean)"},
		{"merge_method: fisher\nbase_model: base\nmodels:\n  - model: ft0\n    parameters: {statistics: 3}\n",
			"models[0].parameters.statistics must be a string"},
		{"merge_method: fisher\nbase_model: base\nmodels:\n  - model: ft0\n    parameters: {statistics: f0.safetensors}\nparameters: {alpha: 0.5}\n",
			"parameters.alpha is not a parameter of fisher (it belongs to regmean)"},
	}
	for _, c := range cases {
		_, err := ParseConfig([]byte(c.text), root)
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.text, err, c.want)
		}
	}
}

// randomGram is XᵀX/N for N = 2·in rows of N(0, 1) inputs.
func randomGram(r *rand.Rand, in int) []float32 {
	n := 2 * in
	x := make([]float64, n*in)
	for j := range x {
		x[j] = r.NormFloat64()
	}
	g := make([]float32, in*in)
	for a := range in {
		for c := range in {
			var s float64
			for k := range n {
				s += x[k*in+a] * x[k*in+c]
			}
			g[a*in+c] = float32(s / float64(n))
		}
	}
	return g
}

// shapedStats writes stats whose shapes are given explicitly.
func shapedStats(t testing.TB, path string, stats map[string]safetensors.Tensor) {
	t.Helper()
	if err := safetensors.Save(path, stats, nil); err != nil {
		t.Fatal(err)
	}
}

// The pipeline merges fisher and regmean from statistics files exactly as
// the engine does in memory with the same statistics.
func TestRunDataAwareMatchesInMemory(t *testing.T) {
	for _, method := range []string{"fisher", "regmean"} {
		for _, dt := range []safetensors.DType{safetensors.F32, safetensors.BF16} {
			t.Run(fmt.Sprintf("%s %v", method, dt), func(t *testing.T) {
				base, models := family(7, withDType(defaultSpecs, dt), 2)
				root, basePath, paths := setup(t, base, models, 0)
				r := rand.New(rand.NewPCG(1, 2))
				mem := map[string][]tensor.Vec{}
				var perModel []string
				for i := range models {
					files := map[string]safetensors.Tensor{"not.merged": {DType: safetensors.F32, Shape: []int64{2}, Data: encode([]float32{1, 2}, safetensors.F32)}}
					for _, name := range slices.Sorted(maps.Keys(base)) {
						b := base[name]
						if _, ok := checkpoint.KernelDType(b.DType); !ok {
							continue
						}
						var v []float32
						var shape []int64
						switch {
						case method == "fisher":
							v = make([]float32, numel(b.Shape))
							for j := range v {
								v[j] = float32(r.ExpFloat64())
							}
							shape = b.Shape
						case len(b.Shape) == 2 && name != "embed.weight":
							in := b.Shape[1]
							v, shape = randomGram(r, int(in)), []int64{in, in}
						default:
							continue
						}
						// Model 1's file holds float16 statistics: widened on load.
						sdt := safetensors.F32
						if i == 1 {
							sdt = safetensors.F16
						}
						enc := encode(v, sdt)
						files[name] = safetensors.Tensor{DType: sdt, Shape: shape, Data: enc}
						mem[name] = append(mem[name], tensor.FromF32(decode(enc, sdt)))
					}
					p := filepath.Join(root, fmt.Sprintf("stats%d.safetensors", i))
					shapedStats(t, p, files)
					perModel = append(perModel, fmt.Sprintf("weight: %v, statistics: %s", 1+i, p))
				}
				text := yamlConfig(method, basePath, paths, "lambda: 0.8", perModel, "")
				res, out, err := run(t, context.Background(), root, text, Options{})
				if err != nil {
					t.Fatal(err)
				}
				cfg := mustParse(t, text)
				p := cfg.Params()
				p.Statistics = mem
				want := referenceWith(t, cfg.Method, p, base, models)
				assertEqual(t, readAll(t, out), want)
				if !slices.ContainsFunc(res.Notes, func(n string) bool { return strings.Contains(n, "not.merged") }) {
					t.Errorf("notes %q do not mention the unused statistics", res.Notes)
				}
			})
		}
	}
}

// referenceWith is reference with explicit engine parameters.
func referenceWith(t testing.TB, method string, p merge.Params, base tensors, models []tensors) tensors {
	t.Helper()
	var ts []merge.Tensor
	out := tensors{}
	for _, name := range slices.Sorted(maps.Keys(base)) {
		b := base[name]
		bdt, isFloat := checkpoint.KernelDType(b.DType)
		if !isFloat {
			out[name] = b
			continue
		}
		mt := merge.Tensor{Name: name, Base: vecOfTensor(b), Out: tensor.Alloc(numel(b.Shape), bdt)}
		for _, d := range b.Shape {
			mt.Shape = append(mt.Shape, int(d))
		}
		for _, m := range models {
			mt.Models = append(mt.Models, vecOfTensor(m[name]))
		}
		ts = append(ts, mt)
	}
	if err := merge.Run(method, p, ts); err != nil {
		t.Fatalf("merge.Run: %v", err)
	}
	for _, mt := range ts {
		out[mt.Name] = safetensors.Tensor{DType: checkpoint.FromKernel(mt.Out.DType), Shape: base[mt.Name].Shape, Data: vecBytes(mt.Out)}
	}
	return out
}

func TestEngineParamsProblems(t *testing.T) {
	base, models := family(3, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 0)
	f32 := func(shape ...int64) safetensors.Tensor {
		return safetensors.Tensor{DType: safetensors.F32, Shape: shape, Data: encode(make([]float32, numel(shape)), safetensors.F32)}
	}
	cases := []struct {
		name   string
		method string
		files  [2]map[string]safetensors.Tensor
		want   string
	}{
		{"partial", "fisher", [2]map[string]safetensors.Tensor{{"layers.0.attn.bias": f32(48)}, {"head.weight": f32(3, 5, 7)}},
			`the statistics of models[1] (` + filepath.Join(root, "s1.safetensors") + `) lack tensor "layers.0.attn.bias", which another model's have`},
		{"fisher shape", "fisher", [2]map[string]safetensors.Tensor{{"layers.0.attn.bias": f32(6, 8)}, {"layers.0.attn.bias": f32(48)}},
			`tensor "layers.0.attn.bias" in the statistics of models[0]`},
		{"gram not square", "regmean", [2]map[string]safetensors.Tensor{{"layers.0.attn.weight": f32(48, 47)}, {"layers.0.attn.weight": f32(48, 48)}},
			"a Gram matrix must be square (in × in), got shape [48 47]"},
		{"dtype", "fisher", [2]map[string]safetensors.Tensor{{"mask": {DType: safetensors.I64, Shape: []int64{1}, Data: make([]byte, 8)}, "layers.0.attn.bias": {DType: safetensors.I32, Shape: []int64{48}, Data: make([]byte, 4*48)}}, {"layers.0.attn.bias": f32(48)}},
			"statistics must be float32, float16 or bfloat16"},
		{"nothing matches", "fisher", [2]map[string]safetensors.Tensor{{"other": f32(2)}, {"other": f32(2)}},
			"none of the fisher statistics names a merged tensor"},
		{"engine checks the side", "regmean", [2]map[string]safetensors.Tensor{{"layers.0.attn.weight": f32(5, 5)}, {"layers.0.attn.weight": f32(5, 5)}},
			"is 5×5, but the tensor's shape is [64 48]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var perModel []string
			for i, f := range c.files {
				p := filepath.Join(root, fmt.Sprintf("s%d.safetensors", i))
				shapedStats(t, p, f)
				perModel = append(perModel, "statistics: "+p)
			}
			before := entries(t, root)
			_, _, err := run(t, context.Background(), root, yamlConfig(c.method, basePath, paths, "", perModel, ""), Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
			if !errors.Is(err, ErrInput) && !errors.Is(err, merge.ErrInput) {
				t.Errorf("%v is not an input error", err)
			}
			assertNothingLeft(t, root, before)
		})
	}
}
