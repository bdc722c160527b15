package stream

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/x448/float16"

	"github.com/npsfuse/npsfuse/arrowio/checkpoint"
	"github.com/npsfuse/npsfuse/arrowio/safetensors"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// spec is one tensor of a generated checkpoint.
type spec struct {
	name  string
	dt    safetensors.DType
	shape []int64
}

// tensors is a checkpoint's content by name.
type tensors = map[string]safetensors.Tensor

// defaultSpecs is a small model: float tensors of several shapes (one of
// 3 chunks of the engine's 16384-entry chunking), an int64 buffer and a
// bool mask, which are copied from the base.
var defaultSpecs = []spec{
	{"embed.weight", safetensors.F32, []int64{130, 300}},
	{"layers.0.attn.weight", safetensors.F32, []int64{64, 48}},
	{"layers.0.attn.bias", safetensors.F32, []int64{48}},
	{"layers.1.mlp.weight", safetensors.F32, []int64{70, 80}},
	{"head.weight", safetensors.F32, []int64{3, 5, 7}},
	{"position_ids", safetensors.I64, []int64{1, 12}},
	{"mask", safetensors.BOOL, []int64{3}},
}

// withDType returns specs with every float tensor stored as dt.
func withDType(specs []spec, dt safetensors.DType) []spec {
	out := slices.Clone(specs)
	for i := range out {
		if _, ok := checkpoint.KernelDType(out[i].dt); ok {
			out[i].dt = dt
		}
	}
	return out
}

// encode stores float32 values as dtype dt, rounding to nearest even.
func encode(v []float32, dt safetensors.DType) []byte {
	var b []byte
	for _, x := range v {
		switch dt {
		case safetensors.F32:
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
		case safetensors.BF16:
			b = binary.LittleEndian.AppendUint16(b, tensor.BF16Bits(x))
		case safetensors.F16:
			b = binary.LittleEndian.AppendUint16(b, uint16(float16.Fromfloat32(x)))
		default:
			panic(fmt.Sprintf("encode: %v", dt))
		}
	}
	return b
}

// decode widens float bytes to float32.
func decode(b []byte, dt safetensors.DType) []float32 {
	var out []float32
	switch dt {
	case safetensors.F32:
		for i := 0; i+4 <= len(b); i += 4 {
			out = append(out, math.Float32frombits(binary.LittleEndian.Uint32(b[i:])))
		}
	case safetensors.BF16:
		for i := 0; i+2 <= len(b); i += 2 {
			out = append(out, math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[i:]))<<16))
		}
	case safetensors.F16:
		for i := 0; i+2 <= len(b); i += 2 {
			out = append(out, float16.Frombits(binary.LittleEndian.Uint16(b[i:])).Float32())
		}
	default:
		panic(fmt.Sprintf("decode: %v", dt))
	}
	return out
}

func numel(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

// family draws a base checkpoint (entries N(0, 0.5²)) and nModels
// fine-tunes (base + N(0, 0.05²)) from seed. Integer and bool buffers are
// equal in all models.
func family(seed uint64, specs []spec, nModels int) (tensors, []tensors) {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	base := tensors{}
	models := make([]tensors, nModels)
	for i := range models {
		models[i] = tensors{}
	}
	for _, s := range specs {
		n := numel(s.shape)
		switch s.dt {
		case safetensors.F32, safetensors.BF16, safetensors.F16:
			b := make([]float32, n)
			for i := range b {
				b[i] = float32(r.NormFloat64() * 0.5)
			}
			base[s.name] = safetensors.Tensor{DType: s.dt, Shape: s.shape, Data: encode(b, s.dt)}
			bw := decode(base[s.name].Data, s.dt) // the stored base, rounded
			for _, m := range models {
				v := make([]float32, n)
				for i := range v {
					v[i] = bw[i] + float32(r.NormFloat64()*0.05)
				}
				m[s.name] = safetensors.Tensor{DType: s.dt, Shape: s.shape, Data: encode(v, s.dt)}
			}
		case safetensors.I64:
			var b []byte
			for i := range n {
				b = binary.LittleEndian.AppendUint64(b, uint64(i))
			}
			base[s.name] = safetensors.Tensor{DType: s.dt, Shape: s.shape, Data: b}
			for _, m := range models {
				m[s.name] = safetensors.Tensor{DType: s.dt, Shape: s.shape, Data: slices.Clone(b)}
			}
		case safetensors.BOOL:
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(i % 2)
			}
			base[s.name] = safetensors.Tensor{DType: s.dt, Shape: s.shape, Data: b}
			for _, m := range models {
				m[s.name] = safetensors.Tensor{DType: s.dt, Shape: s.shape, Data: slices.Clone(b)}
			}
		default:
			panic(fmt.Sprintf("family: %v", s.dt))
		}
	}
	return base, models
}

// writeSingle saves ts as dir/model.safetensors with a config.json and a
// tokenizer file, and returns dir.
func writeSingle(t testing.TB, dir string, ts tensors) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := safetensors.Save(filepath.Join(dir, checkpoint.SingleFile), ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	writeAux(t, dir)
	return dir
}

// writeSharded saves ts as n shards (names dealt round robin in sorted
// order) with model.safetensors.index.json, and returns dir.
func writeSharded(t testing.TB, dir string, ts tensors, n int) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	names := slices.Sorted(maps.Keys(ts))
	parts := make([]tensors, n)
	wm := map[string]string{}
	for i, name := range names {
		k := i % n
		if parts[k] == nil {
			parts[k] = tensors{}
		}
		parts[k][name] = ts[name]
		wm[name] = fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, n)
	}
	for k, p := range parts {
		if err := safetensors.Save(filepath.Join(dir, fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, n)), p, nil); err != nil {
			t.Fatal(err)
		}
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": wm})
	if err := os.WriteFile(filepath.Join(dir, checkpoint.IndexFile), idx, 0o644); err != nil {
		t.Fatal(err)
	}
	writeAux(t, dir)
	return dir
}

func writeAux(t testing.TB, dir string) {
	t.Helper()
	files := map[string]string{
		"config.json":    `{"architectures": ["TinyForCausalLM"], "model_type": "tiny", "hidden_size": 64, "torch_dtype": "float32", "rope_theta": 10000.0}`,
		"tokenizer.json": `{"version": "1.0", "model": {"type": "BPE"}}`,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// setup writes base and models into a fresh folder (base sharded in
// baseShards files when > 1) and returns their paths and the folder.
func setup(t testing.TB, base tensors, models []tensors, baseShards int) (root, basePath string, modelPaths []string) {
	t.Helper()
	root = t.TempDir()
	if baseShards > 1 {
		basePath = writeSharded(t, filepath.Join(root, "base"), base, baseShards)
	} else {
		basePath = writeSingle(t, filepath.Join(root, "base"), base)
	}
	for i, m := range models {
		modelPaths = append(modelPaths, writeSingle(t, filepath.Join(root, fmt.Sprintf("ft%d", i)), m))
	}
	return root, basePath, modelPaths
}

// yamlConfig renders a mergekit-style config.
func yamlConfig(method, base string, models []string, global string, perModel []string, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "merge_method: %s\n", method)
	if base != "" {
		fmt.Fprintf(&b, "base_model: %s\n", base)
	}
	b.WriteString("models:\n")
	for i, m := range models {
		fmt.Fprintf(&b, "  - model: %s\n", m)
		if i < len(perModel) && perModel[i] != "" {
			fmt.Fprintf(&b, "    parameters: {%s}\n", perModel[i])
		}
	}
	if global != "" {
		fmt.Fprintf(&b, "parameters: {%s}\n", global)
	}
	b.WriteString(extra)
	return b.String()
}

func mustParse(t testing.TB, text string) *Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(text), "")
	if err != nil {
		t.Fatalf("ParseConfig:\n%s\n%v", text, err)
	}
	return cfg
}

// vecOfTensor copies a tensor into aligned Go memory as a kernel Vec.
func vecOfTensor(st safetensors.Tensor) tensor.Vec {
	dt, ok := checkpoint.KernelDType(st.DType)
	if !ok {
		panic("vecOfTensor: not a float tensor")
	}
	n := len(st.Data) / dt.Size()
	v := tensor.Alloc(n, dt)
	if dt == tensor.F32 {
		for i := range n {
			v.F32[i] = math.Float32frombits(binary.LittleEndian.Uint32(st.Data[4*i:]))
		}
	} else {
		for i := range n {
			v.U16[i] = binary.LittleEndian.Uint16(st.Data[2*i:])
		}
	}
	return v
}

func vecBytes(v tensor.Vec) []byte {
	var b []byte
	if v.DType == tensor.F32 {
		for _, x := range v.F32 {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
		}
		return b
	}
	for _, x := range v.U16 {
		b = binary.LittleEndian.AppendUint16(b, x)
	}
	return b
}

// reference merges the float tensors of base and models in memory with
// merge.Run (in sorted name order, as the pipeline does), skipping the
// names in skip, and returns each output's bytes in dtype outDT (0: the
// base's). Integer tensors and skipped ones are the base's bytes.
func reference(t testing.TB, cfg *Config, base tensors, models []tensors, outDT tensor.DType, skip ...string) tensors {
	t.Helper()
	var ts []merge.Tensor
	out := tensors{}
	for _, name := range slices.Sorted(maps.Keys(base)) {
		b := base[name]
		bdt, isFloat := checkpoint.KernelDType(b.DType)
		if !isFloat || slices.Contains(skip, name) {
			out[name] = b
			continue
		}
		odt := outDT
		if odt == 0 {
			odt = bdt
		}
		mt := merge.Tensor{Name: name, Base: vecOfTensor(b), Out: tensor.Alloc(numel(b.Shape), odt)}
		for _, d := range b.Shape {
			mt.Shape = append(mt.Shape, int(d))
		}
		for _, m := range models {
			mt.Models = append(mt.Models, vecOfTensor(m[name]))
		}
		ts = append(ts, mt)
	}
	if err := merge.Run(cfg.Method, cfg.Params(), ts); err != nil {
		t.Fatalf("merge.Run: %v", err)
	}
	for _, mt := range ts {
		out[mt.Name] = safetensors.Tensor{DType: checkpoint.FromKernel(mt.Out.DType), Shape: base[mt.Name].Shape, Data: vecBytes(mt.Out)}
	}
	return out
}

// readAll opens the checkpoint at dir and copies out every tensor.
func readAll(t testing.TB, dir string) tensors {
	t.Helper()
	c, err := checkpoint.Open(dir)
	if err != nil {
		t.Fatalf("open output: %v", err)
	}
	defer c.Close()
	out := tensors{}
	for _, n := range c.Names() {
		info, _ := c.Info(n)
		b, err := c.Bytes(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = safetensors.Tensor{DType: info.DType, Shape: info.Shape, Data: slices.Clone(b)}
	}
	return out
}

// assertEqual checks that got and want hold the same tensors bit for bit.
func assertEqual(t testing.TB, got, want tensors) {
	t.Helper()
	if g, w := slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)); !slices.Equal(g, w) {
		t.Fatalf("tensor names differ:\n got %q\nwant %q", g, w)
	}
	for name, w := range want {
		g := got[name]
		if g.DType != w.DType || !slices.Equal(g.Shape, w.Shape) {
			t.Errorf("%s: got %v%v, want %v%v", name, g.DType, g.Shape, w.DType, w.Shape)
			continue
		}
		if string(g.Data) != string(w.Data) {
			diff := 0
			if _, ok := checkpoint.KernelDType(w.DType); ok {
				gv, wv := decode(g.Data, g.DType), decode(w.Data, w.DType)
				for i := range wv {
					if gv[i] != wv[i] {
						diff++
					}
				}
			}
			t.Errorf("%s: data differ (%d elements)", name, diff)
		}
	}
}

// entries lists a folder's entry names, sorted.
func entries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}
