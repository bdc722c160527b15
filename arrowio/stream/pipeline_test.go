package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// run parses text and merges into root/out with opt (OutDir set here).
func run(t testing.TB, ctx context.Context, root, text string, opt Options) (*Result, string, error) {
	t.Helper()
	cfg := mustParse(t, text)
	opt.OutDir = filepath.Join(root, "out")
	res, err := Run(ctx, cfg, opt)
	return res, opt.OutDir, err
}

// assertNothingLeft checks that a failed run left root as it was: no out
// folder, no temporary folder.
func assertNothingLeft(t testing.TB, root string, before []string) {
	t.Helper()
	if after := entries(t, root); !slices.Equal(after, before) {
		t.Errorf("folder %s holds %q after the failed run, %q before", root, after, before)
	}
}

// Streaming merges equal the in-memory engine bit for bit, for every input
// layout and method family.
func TestRunMatchesInMemory(t *testing.T) {
	cases := []struct {
		name       string
		method     string
		noBase     bool
		global     string
		perModel   []string
		extra      string
		dt         safetensors.DType
		baseShards int
		outDT      tensor.DType
	}{
		{name: "ties", method: "ties", global: "density: 0.3", dt: safetensors.F32},
		{name: "ties per-model weights and densities, sharded base", method: "ties", perModel: []string{"weight: 0.5, density: 0.2", "weight: 1.5", "density: 0.9"},
			global: "density: 0.4, lambda: 0.8", dt: safetensors.F32, baseShards: 3},
		{name: "task_arithmetic", method: "task_arithmetic", perModel: []string{"weight: 0.3", "weight: -0.5", "weight: 0.9"}, global: "lambda: 1.3", dt: safetensors.F32},
		{name: "dare_ties", method: "dare_ties", global: "density: 0.5", extra: "seed: 5\n", dt: safetensors.F32},
		{name: "dare_linear normalize", method: "dare_linear", global: "density: 0.6, normalize: true", extra: "seed: 17\n", dt: safetensors.F32},
		{name: "linear without base", method: "linear", noBase: true, perModel: []string{"weight: 1", "weight: 2", "weight: 0.5"}, dt: safetensors.F32},
		{name: "magnitude_prune", method: "magnitude_prune", global: "density: 0.1", dt: safetensors.F32},
		{name: "ties scope global", method: "ties", global: "density: 0.25", extra: "scope: global\n", dt: safetensors.F32},
		{name: "magnitude_prune scope global, sharded base", method: "magnitude_prune", global: "density: 0.3", extra: "scope: global\n", dt: safetensors.F32, baseShards: 2},
		{name: "dare_ties scope global", method: "dare_ties", global: "density: 0.3", extra: "scope: global\nseed: 3\n", dt: safetensors.F32},
		{name: "bf16 ties", method: "ties", global: "density: 0.5", dt: safetensors.BF16},
		{name: "f16 task_arithmetic", method: "task_arithmetic", dt: safetensors.F16},
		{name: "f16 in, bf16 out", method: "ties", global: "density: 0.5", extra: "out_dtype: bfloat16\n", dt: safetensors.F16, outDT: tensor.BF16},
		{name: "bf16 in, fp32 compute dtype out", method: "ties", extra: "dtype: float32\n", dt: safetensors.BF16, outDT: tensor.F32},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, models := family(uint64(i+1), withDType(defaultSpecs, c.dt), 3)
			root, basePath, paths := setup(t, base, models, c.baseShards)
			bp := basePath
			if c.noBase {
				bp = ""
			}
			text := yamlConfig(c.method, bp, paths, c.global, c.perModel, c.extra)
			res, out, err := run(t, context.Background(), root, text, Options{})
			if err != nil {
				t.Fatal(err)
			}
			refBase := base
			if c.noBase { // linear without a base: model 0 lays out the output
				refBase = models[0]
			}
			want := reference(t, mustParse(t, text), refBase, models, c.outDT)
			assertEqual(t, readAll(t, out), want)
			if res.OutDir != out || res.Tensors != len(base) || res.Shards != 1 {
				t.Errorf("result %+v", res)
			}
			var written, read int64
			for name, w := range want {
				written += int64(len(w.Data))
				read += int64(len(base[name].Data))
				if _, ok := checkpoint.KernelDType(base[name].DType); ok {
					for _, m := range models {
						read += int64(len(m[name].Data))
					}
				}
			}
			if res.BytesWritten != written || res.BytesRead != read {
				t.Errorf("bytes written %d read %d, want %d %d", res.BytesWritten, res.BytesRead, written, read)
			}
			if got := entries(t, out); !slices.Equal(got, []string{"README.md", "config.json", "model.safetensors", "tokenizer.json"}) {
				t.Errorf("output holds %q", got)
			}
		})
	}
}

// Hand-computed merges of two tiny models: the pipeline's parameter
// mapping (weights, λ, density, normalize defaults) end to end.
func TestRunKnownValues(t *testing.T) {
	vec := func(v ...float32) safetensors.Tensor {
		return safetensors.Tensor{DType: safetensors.F32, Shape: []int64{int64(len(v))}, Data: encode(v, safetensors.F32)}
	}
	base := tensors{"w": vec(1, 2, -1, 0.5)}
	models := []tensors{{"w": vec(2, 2, -3, 0.5)}, {"w": vec(1, 4, 1, 1.5)}}
	// τ₀ = (1, 0, −2, 0), τ₁ = (0, 2, 2, 1).
	cases := []struct {
		name, method string
		noBase       bool
		global       string
		perModel     []string
		want         []float32
	}{
		// θ₀ + 2·(0.5τ₀ + τ₁) = θ₀ + (1, 4, 2, 2).
		{"task_arithmetic", "task_arithmetic", false, "lambda: 2", []string{"weight: 0.5", "weight: 1"}, []float32{2, 6, 1, 2.5}},
		// Sign of τ₀+τ₁ = (1, 2, 0, 1) is + everywhere (0 counts as +);
		// mean of the agreeing nonzero entries: (1, 2, 2, 1).
		{"ties density 1", "ties", false, "", nil, []float32{2, 4, 1, 1.5}},
		// Top 2 of |τ|: τ₀ keeps (1, 0, −2, 0), τ₁ keeps (0, 2, 2, 0).
		{"ties density 0.5", "ties", false, "density: 0.5", nil, []float32{2, 4, 1, 0.5}},
		// Weights (2, 1): the election sums 2τ₀+τ₁ = (2, 2, −2, 1), so entry 2
		// elects −; without normalize the agreeing w·τ are summed: (2, 2, −4, 1).
		{"ties no normalize", "ties", false, "normalize: false", []string{"weight: 2", "weight: 1"}, []float32{3, 4, -5, 1.5}},
		// With normalize they are divided by their weight sum: (1, 2, −2, 1).
		{"ties weighted normalize", "ties", false, "", []string{"weight: 2", "weight: 1"}, []float32{2, 4, -3, 1.5}},
		// (θ₁ + 3θ₂)/4.
		{"linear", "linear", true, "", []string{"weight: 1", "weight: 3"}, []float32{1.25, 3.5, 0, 1.25}},
		// Same, normalize off: θ₁ + 3θ₂.
		{"linear no normalize", "linear", true, "normalize: false", []string{"weight: 1", "weight: 3"}, []float32{5, 14, 0, 5}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root, basePath, paths := setup(t, base, models, 1)
			if c.noBase {
				basePath = ""
			}
			_, out, err := run(t, context.Background(), root, yamlConfig(c.method, basePath, paths, c.global, c.perModel, ""), Options{})
			if err != nil {
				t.Fatal(err)
			}
			got := decode(readAll(t, out)["w"].Data, safetensors.F32)
			if !slices.Equal(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

// A small shard size splits the output into model-0000i-of-0000N files with
// a correct index; the tensors equal those of the single-file output.
func TestRunSharding(t *testing.T) {
	base, models := family(7, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, "")
	const shardSize = 20_000 // bytes: embed.weight (156000) and layers.1.mlp.weight (22400) get files alone
	res, out, err := run(t, context.Background(), root, text, Options{ShardSize: shardSize})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(out, checkpoint.IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var index struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &index); err != nil {
		t.Fatal(err)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range base {
			if !yield(k) {
				return
			}
		}
	})
	var total int64
	for _, n := range names {
		total += int64(len(base[n].Data))
	}
	if index.Metadata.TotalSize != total || len(index.WeightMap) != len(base) {
		t.Errorf("index total_size %d with %d tensors, want %d and %d", index.Metadata.TotalSize, len(index.WeightMap), total, len(base))
	}
	// Expected layout: tensors in name order, a new shard whenever the next
	// tensor would pass shardSize.
	var want [][]string
	var size int64
	for _, n := range names {
		b := int64(len(base[n].Data))
		if len(want) == 0 || size+b > shardSize {
			want = append(want, nil)
			size = 0
		}
		want[len(want)-1] = append(want[len(want)-1], n)
		size += b
	}
	if res.Shards != len(want) || len(want) != 4 {
		t.Fatalf("%d shards, want %d (4)", res.Shards, len(want))
	}
	files := []string{"README.md", "config.json", checkpoint.IndexFile, "tokenizer.json"}
	for i, group := range want {
		file := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(want))
		files = append(files, file)
		f, err := safetensors.Open(filepath.Join(out, file))
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Names(); !slices.Equal(got, slices.Sorted(slices.Values(group))) {
			t.Errorf("%s holds %q, want %q", file, got, group)
		}
		if f.Metadata()["format"] != "pt" {
			t.Errorf("%s metadata %v lacks format pt", file, f.Metadata())
		}
		f.Close()
		for _, n := range group {
			if index.WeightMap[n] != file {
				t.Errorf("index puts %s in %q, want %q", n, index.WeightMap[n], file)
			}
		}
	}
	slices.Sort(files)
	if got := entries(t, out); !slices.Equal(got, files) {
		t.Errorf("output holds %q, want %q", got, files)
	}
	want2 := reference(t, mustParse(t, text), base, models, 0)
	assertEqual(t, readAll(t, out), want2)

	// config.json: the base's, with torch_dtype set; the card names the method.
	cfgRaw, _ := os.ReadFile(filepath.Join(out, "config.json"))
	var hf map[string]any
	if err := json.Unmarshal(cfgRaw, &hf); err != nil || hf["torch_dtype"] != "float32" || hf["model_type"] != "tiny" || hf["rope_theta"] != 10000.0 {
		t.Errorf("config.json %s (%v)", cfgRaw, err)
	}
	card, _ := os.ReadFile(filepath.Join(out, "README.md"))
	if !bytes.Contains(card, []byte("merge_method: ties")) || !bytes.Contains(card, []byte(paths[1])) {
		t.Errorf("model card lacks the configuration:\n%s", card)
	}
}

// Integer and boolean tensors are copied from the base, unchanged by
// out_dtype; the models must hold the same values (gocore/plan's rule, as
// in npsfuse.merge), and a model may lack one only with AllowMissing.
func TestRunCopiesIntegerTensors(t *testing.T) {
	base, models := family(3, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("task_arithmetic", basePath, paths, "", nil, "out_dtype: bfloat16\n")
	_, out, err := run(t, context.Background(), root, text, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := readAll(t, out)
	for _, n := range []string{"position_ids", "mask"} {
		if g := got[n]; g.DType != base[n].DType || !slices.Equal(g.Shape, base[n].Shape) || !bytes.Equal(g.Data, base[n].Data) {
			t.Errorf("%s: got %v%v %v, want the base's %v", n, g.DType, g.Shape, g.Data, base[n].Data)
		}
	}

	models[0]["position_ids"] = safetensors.Tensor{DType: safetensors.I64, Shape: []int64{1, 12}, Data: bytes.Repeat([]byte{7}, 96)}
	delete(models[1], "mask")
	root, basePath, paths = setup(t, base, models, 1)
	text = yamlConfig("task_arithmetic", basePath, paths, "", nil, "")
	for _, allow := range []bool{false, true} {
		_, _, err := run(t, context.Background(), root, text, Options{AllowMissing: allow})
		if !errors.Is(err, ErrInput) {
			t.Fatalf("allow missing %v: error %v does not wrap ErrInput", allow, err)
		}
		want := []string{`tensor "position_ids" (I64) differs between the base and model 0 (` + filepath.Join(paths[0], checkpoint.SingleFile) + ")"}
		if !allow {
			want = append(want, `tensor "mask" is missing from model 1 (`+paths[1]+"); --allow-missing keeps the base's")
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("allow missing %v: error does not contain %q:\n%v", allow, w, err)
			}
		}
		if allow && strings.Contains(err.Error(), "mask") {
			t.Errorf("AllowMissing: the missing mask is still refused:\n%v", err)
		}
	}
}

// A tensor missing from a model is an error naming tensor and model unless
// AllowMissing, which keeps the base's tensor (converted to the output
// dtype) and notes it.
func TestRunAllowMissing(t *testing.T) {
	base, models := family(11, defaultSpecs, 3)
	delete(models[1], "layers.0.attn.bias")
	delete(models[0], "head.weight")
	delete(models[2], "head.weight")
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, "")
	before := entries(t, root)
	_, _, err := run(t, context.Background(), root, text, Options{})
	if !errors.Is(err, ErrInput) {
		t.Fatalf("error %v does not wrap ErrInput", err)
	}
	for _, w := range []string{
		`tensor "layers.0.attn.bias" is missing from model 1 (` + paths[1] + ")",
		`tensor "head.weight" is missing from model 0 (` + paths[0] + ")",
		`tensor "head.weight" is missing from model 2 (` + paths[2] + ")",
		"--allow-missing",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q:\n%v", w, err)
		}
	}
	assertNothingLeft(t, root, before)

	for _, outDT := range []tensor.DType{0, tensor.BF16} {
		t.Run(fmt.Sprint("out dtype ", outDT), func(t *testing.T) {
			res, out, err := run(t, context.Background(), root, text, Options{AllowMissing: true, DType: dtName(outDT), Force: true})
			if err != nil {
				t.Fatal(err)
			}
			skip := []string{"layers.0.attn.bias", "head.weight"}
			want := reference(t, mustParse(t, text), base, models, outDT, skip...)
			if outDT != 0 {
				for _, n := range skip {
					w := want[n]
					want[n] = safetensors.Tensor{DType: checkpoint.FromKernel(outDT), Shape: w.Shape, Data: encode(decode(w.Data, w.DType), checkpoint.FromKernel(outDT))}
				}
			}
			assertEqual(t, readAll(t, out), want)
			for _, n := range skip {
				if !slices.ContainsFunc(res.Notes, func(s string) bool {
					return strings.Contains(s, `tensor "`+n+`" is missing`) && strings.Contains(s, "base's tensor is kept")
				}) {
					t.Errorf("no note about %s: %q", n, res.Notes)
				}
			}
		})
	}
}

func dtName(d tensor.DType) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// Checkpoints that do not fit together are refused before anything is
// written; the message names the tensor and the files.
func TestRunRejectsMismatches(t *testing.T) {
	cases := []struct {
		name   string
		change func(base tensors, models []tensors)
		want   []string // substrings; %m1 is model 1's file, %b the base's
	}{
		{"shape mismatch", func(_ tensors, ms []tensors) {
			w := ms[1]["layers.0.attn.weight"]
			ms[1]["layers.0.attn.weight"] = safetensors.Tensor{DType: w.DType, Shape: []int64{48, 64}, Data: w.Data}
		}, []string{`tensor "layers.0.attn.weight" has shape [48 64] in model 1 (%m1) but [64 48] in the base (%b)`}},
		{"float tensor stored as int", func(_ tensors, ms []tensors) {
			w := ms[1]["layers.0.attn.bias"]
			ms[1]["layers.0.attn.bias"] = safetensors.Tensor{DType: safetensors.I32, Shape: w.Shape, Data: w.Data}
		}, []string{`tensor "layers.0.attn.bias" has dtype I32 in model 1 (%m1) but F32 in the base`}},
		{"float8 tensor", func(_ tensors, ms []tensors) {
			ms[1]["layers.0.attn.bias"] = safetensors.Tensor{DType: safetensors.F8E4M3, Shape: []int64{48}, Data: make([]byte, 48)}
		}, []string{`tensor "layers.0.attn.bias" has dtype F8_E4M3 in model 1 (%m1)`}},
		{"extra tensor", func(_ tensors, ms []tensors) {
			ms[1]["lm_head.weight"] = ms[1]["head.weight"]
		}, []string{`tensor "lm_head.weight" of model 1 (%m1) is not in the base`}},
		{"several problems", func(_ tensors, ms []tensors) {
			delete(ms[1], "embed.weight")
			w := ms[1]["head.weight"]
			ms[1]["head.weight"] = safetensors.Tensor{DType: w.DType, Shape: []int64{105}, Data: w.Data}
		}, []string{`tensor "embed.weight" is missing from model 1`, `tensor "head.weight" has shape [105] in model 1 (%m1)`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, models := family(5, defaultSpecs, 2)
			c.change(base, models)
			root, basePath, paths := setup(t, base, models, 1)
			before := entries(t, root)
			_, _, err := run(t, context.Background(), root, yamlConfig("ties", basePath, paths, "", nil, ""), Options{})
			if !errors.Is(err, ErrInput) {
				t.Fatalf("error %v does not wrap ErrInput", err)
			}
			r := strings.NewReplacer("%m1", filepath.Join(paths[1], checkpoint.SingleFile), "%b", filepath.Join(basePath, checkpoint.SingleFile))
			for _, w := range c.want {
				if w = r.Replace(w); !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			assertNothingLeft(t, root, before)
		})
	}
}

// NaN or Inf in an input stops the merge with an error naming tensor,
// model and position; shards already written are removed with the
// temporary folder, and no output folder appears.
func TestRunNonFinite(t *testing.T) {
	cases := []struct {
		name, tensor string
		model        int // -1: the base
		value        float32
		dt           safetensors.DType
		want         string
	}{
		{"NaN in model 2", "layers.1.mlp.weight", 2, float32(math.NaN()), safetensors.F32, "model 2 has NaN at flat index 1234"},
		{"+Inf in the base", "layers.0.attn.weight", -1, float32(math.Inf(1)), safetensors.F32, "the base model has +Inf at flat index 1234"},
		{"-Inf in bf16 model 0", "head.weight", 0, float32(math.Inf(-1)), safetensors.BF16, "model 0 has -Inf at flat index 100"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, models := family(9, withDType(defaultSpecs, c.dt), 3)
			target := base
			if c.model >= 0 {
				target = models[c.model]
			}
			v := decode(target[c.tensor].Data, c.dt)
			idx := 1234
			if len(v) <= idx {
				idx = 100
			}
			v[idx] = c.value
			target[c.tensor] = safetensors.Tensor{DType: c.dt, Shape: target[c.tensor].Shape, Data: encode(v, c.dt)}
			root, basePath, paths := setup(t, base, models, 1)
			before := entries(t, root)
			// Small shards: earlier tensors are already on disk when it fails.
			_, _, err := run(t, context.Background(), root, yamlConfig("ties", basePath, paths, "density: 0.5", nil, ""), Options{ShardSize: 20_000})
			if !errors.Is(err, merge.ErrInput) {
				t.Fatalf("error %v does not wrap merge.ErrInput", err)
			}
			for _, w := range []string{`tensor "` + c.tensor + `"`, c.want, "base = " + basePath, "model 2 = " + paths[2]} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			assertNothingLeft(t, root, before)
		})
	}
}

// An existing non-empty output folder is refused unless Force, which
// replaces it; an empty one is used.
func TestRunOutDir(t *testing.T) {
	base, models := family(13, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("task_arithmetic", basePath, paths, "", nil, "")
	out := filepath.Join(root, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(out, "keep.txt")
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := entries(t, root)
	_, _, err := run(t, context.Background(), root, text, Options{})
	if !errors.Is(err, checkpoint.ErrOutput) || !strings.Contains(err.Error(), out+" exists and is not empty (use --force to replace it)") {
		t.Fatalf("error %v", err)
	}
	assertNothingLeft(t, root, before)
	if b, err := os.ReadFile(keep); err != nil || string(b) != "mine" {
		t.Fatalf("the refused folder changed: %q %v", b, err)
	}

	if _, _, err := run(t, context.Background(), root, text, Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, out); slices.Contains(got, "keep.txt") || !slices.Contains(got, "model.safetensors") {
		t.Errorf("after --force the folder holds %q", got)
	}
	if got := entries(t, root); !slices.Equal(got, before) {
		t.Errorf("root holds %q after --force, want %q (no leftovers)", got, before)
	}

	// An empty folder is used as it is.
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, context.Background(), root, text, Options{}); err != nil {
		t.Fatalf("empty out folder: %v", err)
	}

	// A file where the folder should be, and a folder in a new parent.
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := mustParse(t, text)
	if _, err := Run(context.Background(), cfg, Options{OutDir: file}); !errors.Is(err, checkpoint.ErrOutput) {
		t.Errorf("out dir is a file: error %v", err)
	}
	nested := filepath.Join(root, "a", "b", "merged")
	if _, err := Run(context.Background(), cfg, Options{OutDir: nested}); err != nil {
		t.Errorf("nested out dir: %v", err)
	} else if got := entries(t, filepath.Join(root, "a", "b")); !slices.Equal(got, []string{"merged"}) {
		t.Errorf("parent of the nested out dir holds %q", got)
	}
}

// cancelAfter is a progress writer that cancels the merge on its n-th write.
type cancelAfter struct {
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Write(p []byte) (int, error) {
	c.n--
	if c.n == 0 {
		c.cancel()
	}
	return len(p), nil
}

// Cancelling the context stops the merge between tensors and removes
// everything written; a forced replacement leaves the old folder intact.
func TestRunCancel(t *testing.T) {
	base, models := family(17, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, "")
	before := entries(t, root)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := run(t, ctx, root, text, Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled before the start: error %v", err)
	}
	assertNothingLeft(t, root, before)

	// Cancelled after the first tensor, with shards already written.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	_, _, err := run(t, ctx, root, text, Options{ShardSize: 20_000, Progress: &cancelAfter{n: 1, cancel: cancel}})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "merge cancelled") {
		t.Fatalf("cancelled mid-run: error %v", err)
	}
	assertNothingLeft(t, root, before)

	// With Force over an existing output: the old output survives.
	out := filepath.Join(root, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "old.txt"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	before = entries(t, root)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	// The progress line is drawn after the first and the last tensor: this
	// cancels after the last one, just before the output would be committed.
	if _, _, err := run(t, ctx, root, text, Options{Force: true, Progress: &cancelAfter{n: 2, cancel: cancel}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled forced run: error %v", err)
	}
	assertNothingLeft(t, root, before)
	if got := entries(t, out); !slices.Equal(got, []string{"old.txt"}) {
		t.Errorf("the old output holds %q after a cancelled --force run", got)
	}
}

// The output dtype comes from Options.DType, else out_dtype, else dtype,
// else each tensor's base dtype; config.json's dtype key follows.
func TestRunOutputDType(t *testing.T) {
	cases := []struct {
		name     string
		optDType string
		extra    string
		in       safetensors.DType
		want     tensor.DType
		cfgKey   string // the base config.json's dtype key
	}{
		{"base dtype kept", "", "", safetensors.BF16, 0, "torch_dtype"},
		{"option wins", "float16", "out_dtype: bfloat16\ndtype: float32\n", safetensors.F32, tensor.F16, "torch_dtype"},
		{"out_dtype over dtype", "", "out_dtype: bfloat16\ndtype: float32\n", safetensors.F32, tensor.BF16, "torch_dtype"},
		{"dtype alone", "", "dtype: float16\n", safetensors.BF16, tensor.F16, "dtype"},
		{"widen to float32", "float32", "", safetensors.F16, tensor.F32, "dtype"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, models := family(uint64(20+i), withDType(defaultSpecs, c.in), 2)
			root, basePath, paths := setup(t, base, models, 1)
			if c.cfgKey == "dtype" { // as transformers ≥ 4.56 writes it
				if err := os.WriteFile(filepath.Join(basePath, "config.json"), []byte(`{"model_type": "tiny", "dtype": "float32"}`), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			text := yamlConfig("ties", basePath, paths, "density: 0.5", nil, c.extra)
			_, out, err := run(t, context.Background(), root, text, Options{DType: c.optDType})
			if err != nil {
				t.Fatal(err)
			}
			assertEqual(t, readAll(t, out), reference(t, mustParse(t, text), base, models, c.want))
			raw, _ := os.ReadFile(filepath.Join(out, "config.json"))
			var hf map[string]any
			if err := json.Unmarshal(raw, &hf); err != nil {
				t.Fatal(err)
			}
			want := c.want
			if want == 0 {
				want, _ = checkpoint.KernelDType(c.in)
			}
			if hf[c.cfgKey] != want.String() {
				t.Errorf("config.json %s = %v, want %v", c.cfgKey, hf[c.cfgKey], want)
			}
			other := map[string]string{"dtype": "torch_dtype", "torch_dtype": "dtype"}[c.cfgKey]
			if _, ok := hf[other]; ok {
				t.Errorf("config.json gained %q: %s", other, raw)
			}
		})
	}
	t.Run("bad option", func(t *testing.T) {
		base, models := family(1, defaultSpecs, 1)
		root, basePath, paths := setup(t, base, models, 1)
		before := entries(t, root)
		if _, _, err := run(t, context.Background(), root, yamlConfig("ties", basePath, paths, "", nil, ""), Options{DType: "int8"}); err == nil || !strings.Contains(err.Error(), `unknown dtype "int8"`) {
			t.Errorf("error %v", err)
		}
		assertNothingLeft(t, root, before)
	})
}

// Float data that a foreign writer left at an odd offset (after a 3-byte
// tensor) is merged correctly; so are scalars and empty tensors.
func TestRunOddInputs(t *testing.T) {
	specs := []spec{
		{"a.weight", safetensors.F32, []int64{40, 50}},
		{"b.bias", safetensors.F32, []int64{33}},
		{"c.scale", safetensors.F32, []int64{}},
		{"d.empty", safetensors.F32, []int64{0, 4}},
		{"e.one", safetensors.F32, []int64{1}},
	}
	for _, method := range []string{"ties", "dare_ties", "task_arithmetic"} {
		for _, scope := range []string{"tensor", "global"} {
			t.Run(method+" "+scope, func(t *testing.T) {
				base, models := family(31, specs, 2)
				root, basePath, paths := setup(t, base, models, 1)
				// Rewrite model 1 with an odd-length U8 tensor first, so that every
				// later tensor starts at an odd file offset.
				odd := filepath.Join(paths[1], checkpoint.SingleFile)
				infos := []safetensors.TensorInfo{{Name: "a.weight", DType: safetensors.F32}, {Name: "z.odd", DType: safetensors.U8, Shape: []int64{3}}}
				infos[0].Shape = specs[0].shape
				infos = []safetensors.TensorInfo{infos[1], infos[0]}
				for _, s := range specs[1:] {
					infos = append(infos, safetensors.TensorInfo{Name: s.name, DType: s.dt, Shape: s.shape})
				}
				w, err := safetensors.NewWriter(odd, infos, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, in := range infos {
					data := []byte{1, 2, 3}
					if in.Name != "z.odd" {
						data = models[1][in.Name].Data
					}
					if err := w.WriteTensor(in.Name, data); err != nil {
						t.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				f, err := safetensors.Open(odd)
				if err != nil {
					t.Fatal(err)
				}
				ai, _ := f.Info("a.weight")
				if (f.DataOffset()+ai.Begin)%4 == 0 {
					t.Fatalf("a.weight is aligned at %d; the test needs it misaligned", f.DataOffset()+ai.Begin)
				}
				f.Close()
				// z.odd is in model 1 only: put it in the base and model 0 too
				// (integer tensors are copied from the base).
				zt := safetensors.Tensor{DType: safetensors.U8, Shape: []int64{3}, Data: []byte{1, 2, 3}}
				base["z.odd"] = zt
				models[0]["z.odd"] = zt
				writeSingle(t, basePath, base)
				writeSingle(t, paths[0], models[0])
				text := yamlConfig(method, basePath, paths, densityOf(method), nil, "seed: 4\nscope: "+scope+"\n")
				_, out, err := run(t, context.Background(), root, text, Options{})
				if err != nil {
					t.Fatal(err)
				}
				assertEqual(t, readAll(t, out), reference(t, mustParse(t, text), base, models, 0))
			})
		}
	}
}

// Models given as single .safetensors files and a base whose shards have
// no index (found by globbing) merge like folders.
func TestRunFileInputs(t *testing.T) {
	base, models := family(41, defaultSpecs, 2)
	root := t.TempDir()
	baseDir := writeSharded(t, filepath.Join(root, "base"), base, 2)
	if err := os.Remove(filepath.Join(baseDir, checkpoint.IndexFile)); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for i, m := range models {
		p := filepath.Join(root, fmt.Sprintf("ft%d.safetensors", i))
		if err := safetensors.Save(p, m, nil); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	text := yamlConfig("dare_linear", baseDir, paths, "density: 0.7", nil, "seed: 8\n")
	_, out, err := run(t, context.Background(), root, text, Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	assertEqual(t, readAll(t, out), reference(t, mustParse(t, text), base, models, 0))
}

// The progress writer gets a final line; GPT-2 checkpoints get a note on
// their transposed Conv1D weights.
func TestRunProgressAndNotes(t *testing.T) {
	base, models := family(43, defaultSpecs, 2)
	root, basePath, paths := setup(t, base, models, 1)
	if err := os.WriteFile(filepath.Join(basePath, "config.json"), []byte(`{"model_type": "gpt2"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res, _, err := run(t, context.Background(), root, yamlConfig("ties", basePath, paths, "int8_mask: true", nil, ""), Options{Progress: &buf})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), fmt.Sprintf("merged %d tensors", len(base))) || !strings.Contains(buf.String(), "merging 1/7 tensors") {
		t.Errorf("progress output %q", buf.String())
	}
	if !slices.ContainsFunc(res.Notes, func(s string) bool { return strings.Contains(s, "model_type gpt2") }) ||
		!slices.ContainsFunc(res.Notes, func(s string) bool { return strings.Contains(s, "int8_mask") }) {
		t.Errorf("notes %q", res.Notes)
	}
}

// BenchmarkRun streams a 3-model ties merge of a ~25 MB (fp32) checkpoint.
func BenchmarkRun(b *testing.B) {
	specs := []spec{
		{"embed.weight", safetensors.F32, []int64{1000, 1024}},
		{"layers.0.weight", safetensors.F32, []int64{1024, 1024}},
		{"layers.1.weight", safetensors.F32, []int64{1024, 1024}},
		{"layers.2.weight", safetensors.F32, []int64{1024, 1024}},
		{"layers.3.weight", safetensors.F32, []int64{1024, 2048}},
	}
	base, models := family(1, specs, 3)
	root, basePath, paths := setup(b, base, models, 1)
	cfg := mustParse(b, yamlConfig("ties", basePath, paths, "density: 0.2", nil, ""))
	var size int64
	for _, t := range base {
		size += int64(len(t.Data))
	}
	b.SetBytes(4 * size) // bytes read: base and three models
	for i := 0; b.Loop(); i++ {
		if _, err := Run(context.Background(), cfg, Options{OutDir: filepath.Join(root, fmt.Sprint("out", i))}); err != nil {
			b.Fatal(err)
		}
	}
}

// Checkpoints mixing float32 and 16-bit tensors (float32 norms beside
// bfloat16 weights, as some releases store them) merge like uniform ones.
func TestRunMixedDTypes(t *testing.T) {
	specs := []spec{
		{"a.weight", safetensors.F32, []int64{40, 50}},
		{"b.weight", safetensors.BF16, []int64{50, 40}},
		{"c.norm", safetensors.F32, []int64{50}},
		{"d.weight", safetensors.F16, []int64{30, 20}},
	}
	for _, method := range []string{"ties", "task_arithmetic"} {
		t.Run(method, func(t *testing.T) {
			base, models := family(37, specs, 2)
			root, basePath, paths := setup(t, base, models, 1)
			text := yamlConfig(method, basePath, paths, densityOf(method), nil, "")
			_, out, err := run(t, context.Background(), root, text, Options{})
			if err != nil {
				t.Fatal(err)
			}
			assertEqual(t, readAll(t, out), reference(t, mustParse(t, text), base, models, 0))
		})
	}
}

func TestRunReportsNeuroScales(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(11, 12))
	mk := func(name string, scale float32) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, 4*8*6)
		for i := 0; i < 48; i++ {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(1+scale*float32(r.NormFloat64())))
		}
		if err := safetensors.Save(filepath.Join(p, "model.safetensors"), map[string]safetensors.Tensor{
			"w": {DType: safetensors.F32, Shape: []int64{8, 6}, Data: data}}, nil); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := mk("base", 0)
	a, b := mk("a", 0.1), mk("b", 0.1)
	cfg, err := ParseConfig([]byte("merge_method: neuro\nbase_model: "+base+"\nmodels:\n  - model: "+a+"\n  - model: "+b+"\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), cfg, Options{OutDir: filepath.Join(dir, "out")})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.Report["lam2"]; !ok {
		t.Fatalf("report %v lacks lam2", res.Report)
	}
}

// The read-ahead window changes when inputs are read, never what is
// written: a window smaller than any tensor (the next tensor is still read
// ahead) and the default give the same output, and the timing adds up.
func TestRunReadAheadWindow(t *testing.T) {
	base, models := family(41, withDType(defaultSpecs, safetensors.BF16), 3)
	var outs []tensors
	var text string
	for _, ra := range []int64{1, 0, 1 << 40} {
		root, basePath, paths := setup(t, base, models, 2)
		text = yamlConfig("ties", basePath, paths, "density: 0.4", nil, "")
		res, out, err := run(t, context.Background(), root, text, Options{ReadAhead: ra})
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, readAll(t, out))
		tm := res.Timing
		parts := tm.Plan + tm.ReadWait + tm.Merge + tm.WriteWait + tm.Finish
		for _, v := range []float64{tm.Plan, tm.ReadWait, tm.Merge, tm.WriteWait, tm.Finish, tm.Writer} {
			if v < 0 {
				t.Errorf("timing %+v has a negative part", tm)
			}
		}
		if parts > res.Seconds*1.01+1e-3 || tm.Merge <= 0 || tm.Writer <= 0 {
			t.Errorf("timing %+v does not fit %.4f s", tm, res.Seconds)
		}
	}
	want := reference(t, mustParse(t, text), base, models, 0)
	for i, o := range outs {
		assertEqual(t, o, want)
		if i > 0 {
			assertEqual(t, o, outs[0])
		}
	}
}

// densityOf is "density: 0.5" for a method that reads it, else nothing:
// configs refuse parameters their method does not use.
func densityOf(method string) string {
	if s, _ := merge.Spec(method); s.Reads("density") {
		return "density: 0.5"
	}
	return ""
}
