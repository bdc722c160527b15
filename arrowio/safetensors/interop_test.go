package safetensors

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// These tests check interoperability with the reference implementation, the
// Python package safetensors, through the project's virtual environment
// (<module root>/.venv/bin/python, or $NPSFUSE_PYTHON). They skip when that
// interpreter or its safetensors package is missing; CI has both.

// pyScript reads files ("read" mode: one JSON result per path) or writes one
// ("write" mode: a JSON spec on stdin) with the reference implementation.
// It uses only framework-free entry points, so every dtype works.
const pyScript = `
import ctypes, json, sys
import safetensors

TORCH = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
         "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64",
         "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
         "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
         "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
         "F8_E8M0": "float8_e8m0fnu", "F4": "float4_e2m1fn_x2"}

if sys.argv[1] == "read":
    out = {}
    for p in sys.argv[2:]:
        try:
            with open(p, "rb") as fh:
                ts = safetensors.deserialize(fh.read())
            with safetensors.safe_open(p, framework="numpy") as f:
                meta = f.metadata()
            out[p] = {"ok": True, "metadata": meta, "tensors": {
                n: {"dtype": v["dtype"], "shape": v["shape"], "hex": bytes(v["data"]).hex()} for n, v in ts}}
        except Exception as e:
            out[p] = {"ok": False, "error": str(e)}
    json.dump(out, sys.stdout)
else:
    spec = json.load(sys.stdin)
    keep, tensors = [], {}
    for n, t in spec["tensors"].items():
        data = bytes.fromhex(t["hex"])
        buf = ctypes.create_string_buffer(data, max(len(data), 1))
        keep.append(buf)
        shape = list(t["shape"] or [])
        if t["dtype"] == "F4":  # torch packs two F4 per element along the last axis
            shape[-1] //= 2
        tensors[n] = safetensors.TensorSpec(dtype=TORCH[t["dtype"]], shape=shape,
                                            data_ptr=ctypes.addressof(buf), data_len=len(data))
    safetensors.serialize_file(tensors, spec["path"], metadata=spec.get("metadata"))
`

type pyTensor struct {
	DType string  `json:"dtype"`
	Shape []int64 `json:"shape"`
	Hex   string  `json:"hex"`
}

type pyResult struct {
	OK       bool                `json:"ok"`
	Error    string              `json:"error"`
	Metadata map[string]string   `json:"metadata"`
	Tensors  map[string]pyTensor `json:"tensors"`
}

// python returns the reference interpreter, or skips the test.
func python(t *testing.T) string {
	t.Helper()
	py := os.Getenv("NPSFUSE_PYTHON")
	if py == "" {
		dir, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				t.Skip("module root not found")
			}
			dir = parent
		}
		py = filepath.Join(dir, ".venv", "bin", "python")
	}
	if _, err := os.Stat(py); err != nil {
		t.Skipf("reference interpreter %s missing: %v", py, err)
	}
	if out, err := exec.Command(py, "-c", "import safetensors").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import safetensors: %v\n%s", py, err, out)
	}
	return py
}

func runPy(t *testing.T, py string, stdin []byte, args ...string) []byte {
	t.Helper()
	script := filepath.Join(t.TempDir(), "ref.py")
	if err := os.WriteFile(script, []byte(pyScript), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, append([]string{script}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference script %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

func pyRead(t *testing.T, py string, paths ...string) map[string]pyResult {
	t.Helper()
	var res map[string]pyResult
	if err := json.Unmarshal(runPy(t, py, nil, append([]string{"read"}, paths...)...), &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// interopTensors has every dtype the reference can write (all but F6), a
// scalar and an empty tensor.
func interopTensors() map[string]Tensor {
	r := rand.New(rand.NewPCG(7, 8))
	m := map[string]Tensor{}
	for d := BOOL; d < numDTypes; d++ {
		if d == F6E2M3 || d == F6E3M2 {
			continue
		}
		m["layer."+strings.ToLower(d.String())+".weight"] = randTensor(r, d, 3, 4)
	}
	m["scalar"] = randTensor(r, F32)
	m["empty"] = randTensor(r, F16, 0, 2)
	return m
}

func TestInteropGoToPython(t *testing.T) {
	py := python(t)
	tensors := interopTensors()
	r := rand.New(rand.NewPCG(9, 10))
	tensors["f6"] = randTensor(r, F6E2M3, 2, 4) // readable, not writable, by the reference
	meta := map[string]string{"format": "pt", "note": "é \" \\ <&>"}
	path := filepath.Join(t.TempDir(), "go.safetensors")
	if err := Save(path, tensors, meta); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	res := pyRead(t, py, path, abs)
	check := func(p string, want map[string]Tensor, wantMeta map[string]string) {
		got := res[p]
		if !got.OK {
			t.Fatalf("reference refused %s: %s", p, got.Error)
		}
		if len(got.Tensors) != len(want) {
			t.Errorf("%s: reference sees %d tensors, want %d", p, len(got.Tensors), len(want))
		}
		for n, w := range want {
			g, ok := got.Tensors[n]
			if !ok || g.DType != w.DType.String() || !slices.Equal(g.Shape, w.Shape) && len(g.Shape)+len(w.Shape) > 0 ||
				g.Hex != hex.EncodeToString(w.Data) {
				t.Errorf("%s: tensor %q: reference reads %+v, want %v %v %x", p, n, g, w.DType, w.Shape, w.Data)
			}
		}
		if fmt.Sprint(got.Metadata) != fmt.Sprint(wantMeta) {
			t.Errorf("%s: reference metadata %v, want %v", p, got.Metadata, wantMeta)
		}
	}
	check(path, tensors, meta)
	check(abs, goldenTensors(), map[string]string{"format": "pt"})
}

func TestInteropPythonToGo(t *testing.T) {
	py := python(t)
	tensors := interopTensors()
	spec := map[string]any{}
	specTensors := map[string]pyTensor{}
	for n, tt := range tensors {
		specTensors[n] = pyTensor{DType: tt.DType.String(), Shape: tt.Shape, Hex: hex.EncodeToString(tt.Data)}
	}
	dir := t.TempDir()
	for _, meta := range []map[string]string{nil, {"format": "np"}} {
		pyPath := filepath.Join(dir, fmt.Sprintf("py%d.safetensors", len(meta)))
		spec["path"], spec["tensors"], spec["metadata"] = pyPath, specTensors, meta
		in, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		runPy(t, py, in, "write")
		f, err := Open(pyPath)
		if err != nil {
			t.Fatalf("reading the reference's file: %v", err)
		}
		for n, w := range tensors {
			g, err := f.Tensor(n)
			if err != nil || g.DType != w.DType || !slices.Equal(g.Shape, w.Shape) || !bytes.Equal(g.Data, w.Data) {
				t.Errorf("tensor %q: read %v %v %x (%v), want %v %v %x", n, g.DType, g.Shape, g.Data, err, w.DType, w.Shape, w.Data)
			}
		}
		if f.Len() != len(tensors) || fmt.Sprint(f.Metadata()) != fmt.Sprint(meta) {
			t.Errorf("Len %d metadata %v, want %d %v", f.Len(), f.Metadata(), len(tensors), meta)
		}
		f.Close()

		// With at most one metadata key (the reference writes a hash map in
		// arbitrary order), Save reproduces the reference file byte for byte.
		goPath := filepath.Join(dir, fmt.Sprintf("go%d.safetensors", len(meta)))
		if err := Save(goPath, tensors, meta); err != nil {
			t.Fatal(err)
		}
		pyBytes, err1 := os.ReadFile(pyPath)
		goBytes, err2 := os.ReadFile(goPath)
		if err1 != nil || err2 != nil || !bytes.Equal(pyBytes, goBytes) {
			t.Errorf("Save output differs from the reference's (%v, %v):\nref %q\ngo  %q", err1, err2, head(pyBytes), head(goBytes))
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 400)] }

// The reference accepts exactly the files Open accepts, except for the
// documented duplicate-key cases.
func TestInteropValidationParity(t *testing.T) {
	py := python(t)
	dir := t.TempDir()
	var paths []string
	type expect struct {
		name string
		ok   bool
	}
	want := map[string]expect{}
	add := func(name string, file []byte, ok bool) {
		p := filepath.Join(dir, fmt.Sprintf("%03d.safetensors", len(paths)))
		if err := os.WriteFile(p, file, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		want[p] = expect{name, ok}
	}
	for _, c := range badInputs() {
		add(c.name, c.file, c.pyAccepts)
	}
	for _, c := range goodInputs() {
		add(c.name, c.file, true)
	}
	res := pyRead(t, py, paths...)
	for _, p := range paths {
		w, got := want[p], res[p]
		if got.OK != w.ok {
			_, goErr := OpenBytes(mustRead(t, p), w.name)
			t.Errorf("%s: reference ok=%v (%s), want %v; Open says %v", w.name, got.OK, got.Error, w.ok, goErr)
		}
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
