package merge

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// one builds a single-tensor merge with a zero base.
func one(name string, base []float32, models ...[]float32) []Tensor {
	t := Tensor{Name: name, Base: tensor.FromF32(base), Out: tensor.FromF32(make([]float32, len(base)))}
	for _, m := range models {
		t.Models = append(t.Models, tensor.FromF32(m))
	}
	return []Tensor{t}
}

func TestHandComputed(t *testing.T) {
	zero := []float32{0, 0, 0, 0}
	tau1 := []float32{1, -2, 3, 0.5}
	tau2 := []float32{-1, -1, 2, -4}
	cases := []struct {
		name   string
		method string
		p      Params
		base   []float32
		models [][]float32
		want   []float32
	}{
		{"ta sum", "task_arithmetic", Params{Lambda: 1}, zero, [][]float32{tau1, tau2}, []float32{0, -3, 5, -3.5}},
		{"ta normalized, lambda 2", "task_arithmetic", Params{Lambda: 2, Normalize: true}, zero, [][]float32{tau1, tau2}, []float32{0, -3, 5, -3.5}},
		{"ta weights", "task_arithmetic", Params{Lambda: 1, Weights: []float32{2, 0.5}}, zero, [][]float32{tau1, tau2}, []float32{1.5, -4.5, 7, -1}},
		{"ta offset base", "task_arithmetic", Params{Lambda: 1}, []float32{1, 1, 1, 1}, [][]float32{{2, 2, 2, 2}, {0, 0, 0, 0}}, []float32{1, 1, 1, 1}},
		// elect γ = [0→+, −, +, −]; disjoint means [1, −1.5, 2.5, −4]
		{"ties density 1", "ties", Params{Lambda: 1, Density: 1, Normalize: true}, zero, [][]float32{tau1, tau2}, []float32{1, -1.5, 2.5, -4}},
		{"ties no normalize", "ties", Params{Lambda: 1, Density: 1}, zero, [][]float32{tau1, tau2}, []float32{1, -3, 5, -4}},
		// trim to 2 of 4: τ̂1 = [0,−2,3,0], τ̂2 = [0,0,2,−4]; γ = [+,−,+,−]
		{"ties density 0.5", "ties", Params{Lambda: 1, Density: 0.5, Normalize: true}, zero, [][]float32{tau1, tau2}, []float32{0, -2, 2.5, -4}},
		{"magnitude prune", "magnitude_prune", Params{Lambda: 1, Density: 0.5}, zero, [][]float32{tau1, tau2}, []float32{0, -2, 5, -4}},
		{"linear", "linear", Params{Normalize: true, Weights: []float32{3, 1}}, []float32{9, 9, 9, 9}, [][]float32{{4, 0, 8, 4}, {0, 4, 0, 4}}, []float32{3, 1, 6, 4}},
		{"dare density 1 is ta", "dare_linear", Params{Lambda: 1, Density: 1}, zero, [][]float32{tau1, tau2}, []float32{0, -3, 5, -3.5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := one("w", tc.base, tc.models...)
			if err := Run(tc.method, tc.p, ts); err != nil {
				t.Fatal(err)
			}
			got := ts[0].Out.F32
			for j := range got {
				if math.Abs(float64(got[j]-tc.want[j])) > 1e-6 {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestGlobalScopeRanksAcrossTensors(t *testing.T) {
	// Magnitudes over the concatenation [1 5 | 2 5 1 1]: keep 3 → 5, 5, 2.
	a := Tensor{Name: "a", Base: tensor.FromF32(make([]float32, 2)), Models: []tensor.Vec{tensor.FromF32([]float32{1, 5})}, Out: tensor.FromF32(make([]float32, 2))}
	b := Tensor{Name: "b", Base: tensor.FromF32(make([]float32, 4)), Models: []tensor.Vec{tensor.FromF32([]float32{2, -5, 1, 1})}, Out: tensor.FromF32(make([]float32, 4))}
	p := Params{Lambda: 1, Density: 0.5, Scope: ScopeGlobal}
	if err := Run("magnitude_prune", p, []Tensor{a, b}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Out.F32, []float32{0, 5}) || !slices.Equal(b.Out.F32, []float32{2, -5, 0, 0}) {
		t.Fatalf("got %v %v", a.Out.F32, b.Out.F32)
	}
	// Per tensor: a keeps 1 of 2, b keeps 2 of 4.
	p.Scope = ScopeTensor
	if err := Run("magnitude_prune", p, []Tensor{a, b}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Out.F32, []float32{0, 5}) || !slices.Equal(b.Out.F32, []float32{2, -5, 0, 0}) {
		t.Fatalf("got %v %v", a.Out.F32, b.Out.F32)
	}
}

func TestDareMatchesDefinition(t *testing.T) {
	n := 3*parallel.Chunk + 5
	base := make([]float32, n)
	m := make([]float32, n)
	for i := range m {
		m[i] = float32(i%13) - 6
	}
	ts := one("layer.0.weight", base, m)
	d := 0.3
	if err := Run("dare_linear", Params{Lambda: 1, Density: d, Seed: 42, Rescale: true}, ts); err != nil {
		t.Fatal(err)
	}
	key := rng.Key(42, "layer.0.weight", 0)
	kept := 0
	masked := make([]float32, n)
	for i := range masked {
		if rng.Uniform(key, uint64(i)) < float32(d) {
			masked[i] = m[i]
			kept++
		}
	}
	want := l1Rescaled(m, masked)
	for i, got := range ts[0].Out.F32 {
		if got != want[i] {
			t.Fatalf("element %d: got %v want %v", i, got, want[i])
		}
	}
	if frac := float64(kept) / float64(n); math.Abs(frac-d) > 0.01 {
		t.Fatalf("kept fraction %v, want about %v", frac, d)
	}
}

// randomMerge builds tensors of the given shapes (the last dimension
// carries the rest for 1-D) with N(0, 1) bases and models.
func randomMerge(r *rand.Rand, dt tensor.DType, shapes [][]int, T int) []Tensor {
	var ts []Tensor
	fill := func(n int) tensor.Vec {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		v := tensor.Alloc(n, dt)
		v.Store(x, 0)
		return v
	}
	for i, shape := range shapes {
		n := 1
		for _, d := range shape {
			n *= d
		}
		t := Tensor{Name: "t" + string(rune('a'+i)), Shape: shape, Base: fill(n), Out: tensor.Alloc(n, dt)}
		for range T {
			t.Models = append(t.Models, fill(n))
		}
		ts = append(ts, t)
	}
	return ts
}

// modelsFor is how many models the tests give a method: its row's
// maximum where it has one, else three.
func modelsFor(method string) int {
	if s, ok := methodSpecs[method]; ok && s.MaxModels > 0 {
		return s.MaxModels // slerp, nuslerp: 2; nearswap, arcee_fusion: 1
	}
	return 3
}

// testParams is DefaultParams with a value for what a method requires
// (nearswap's t).
func testParams(method string) Params {
	p := DefaultParams(method)
	if method == "nearswap" {
		p.T = 0.05
	}
	return p
}

// testShapes exercise every chunking path: a tiny 1-D tensor, a matrix of
// many short rows, a transposed matrix, rows longer than a chunk, and (with
// big) a tensor large enough for the sampled top-k selection.
func testShapes(big bool) [][]int {
	s := [][]int{{7}, {50, 100}, {3, 2*parallel.Chunk + 3}, {9, 4, 3, 3}}
	if big {
		s = append(s, []int{exactUnit + 3*parallel.Chunk + 11})
	}
	return s
}

func outputs(ts []Tensor) [][]float32 {
	var res [][]float32
	for _, t := range ts {
		x := make([]float32, t.Out.Len())
		t.Out.Load(x, 0)
		res = append(res, x)
	}
	return res
}

func TestThreadCountDoesNotChangeBits(t *testing.T) {
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16} {
		for _, method := range Methods() {
			for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
				if !sampleCase(fmt.Sprint(dt, method, scope)) {
					continue
				}
				p := testParams(method)
				p.Lambda, p.Density, p.Normalize, p.Seed, p.Scope = 0.7, 0.3, true, 9, scope
				var ref [][]float32
				for _, th := range []int{1, 2, 5} {
					p.Pool = parallel.Pool{Threads: th}
					ts := randomMerge(rand.New(rand.NewPCG(3, 4)), dt, testShapes(dt == tensor.F32), modelsFor(method))
					ts[1].Transposed = true
					if err := Run(method, p, ts); err != nil {
						t.Fatal(err)
					}
					got := outputs(ts)
					if ref == nil {
						ref = got
						continue
					}
					for i := range got {
						if !slices.Equal(got[i], ref[i]) {
							t.Fatalf("%v %s scope %v: %d threads differ from 1 thread", dt, method, scope, th)
						}
					}
				}
			}
		}
	}
}

func TestHalfPrecisionIsWidened(t *testing.T) {
	// bf16 inputs: 1 + 2^-7 is exact in bf16; the merge must not lose it.
	base := tensor.Alloc(2, tensor.BF16)
	m := tensor.Alloc(2, tensor.BF16)
	m.Store([]float32{1 + 1.0/128, -3}, 0)
	out := tensor.Alloc(2, tensor.F32)
	ts := []Tensor{{Name: "x", Base: base, Models: []tensor.Vec{m}, Out: out}}
	if err := Run("task_arithmetic", Params{Lambda: 1}, ts); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(out.F32, []float32{1 + 1.0/128, -3}) {
		t.Fatalf("got %v", out.F32)
	}
}

func TestBadInput(t *testing.T) {
	nan := float32(math.NaN())
	cases := []struct {
		name   string
		method string
		p      Params
		ts     []Tensor
		want   string
	}{
		{"unknown method", "tiess", Params{}, one("w", []float32{0}, []float32{1}), `unknown method "tiess"`},
		{"density 0", "ties", Params{Density: 0}, one("w", []float32{0}, []float32{1}), "density must lie in (0, 1], got 0"},
		{"density > 1", "dare_ties", Params{Density: 1.5}, one("w", []float32{0}, []float32{1}), "density must lie in (0, 1], got 1.5"},
		{"weights length", "task_arithmetic", Params{Weights: []float32{1, 2}}, one("w", []float32{0}, []float32{1}), "weight has 2 values for 1 models"},
		{"zero weight sum", "linear", Params{Normalize: true, Weights: []float32{1, -1}}, one("w", []float32{0}, []float32{1}, []float32{2}), "weights sum to 0"},
		{"length", "task_arithmetic", Params{}, one("enc.w", []float32{0, 0}, []float32{1}), `tensor "enc.w": model 0 has 1 elements, base has 2`},
		{"nan in model", "task_arithmetic", Params{}, one("enc.w", []float32{0, 0}, []float32{1, 2}, []float32{1, nan}), `tensor "enc.w": model 1 has NaN at flat index 1`},
		{"inf in base", "ties", Params{Density: 1}, one("b", []float32{float32(math.Inf(-1))}, []float32{1}), `tensor "b": the base model has -Inf`},
		{"no models", "ties", Params{Density: 1}, one("w", []float32{0}), "no models"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Run(tc.method, tc.p, tc.ts)
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrInput containing %q", err, tc.want)
			}
		})
	}
}

// streamCase is the merge the Merger tests stream: method's test
// parameters at scope over random tensors (one transposed), with Run's
// outputs and report.
func streamCase(t *testing.T, method string, scope Scope) (Params, []Tensor, [][]float32, map[string]any) {
	t.Helper()
	T := modelsFor(method)
	p := testParams(method)
	p.Lambda, p.Normalize, p.Seed, p.Scope = 1.3, true, 5, scope
	p.Densities = []float64{0.2, 0.5, 0.4}[:T]
	ts := randomMerge(rand.New(rand.NewPCG(7, 8)), tensor.F32, testShapes(false), T)
	ts[1].Transposed = true
	report, err := RunReport(method, p, ts)
	if err != nil {
		t.Fatal(err)
	}
	return p, ts, outputs(ts), report
}

func TestMergerStreamsLikeRun(t *testing.T) {
	for _, method := range Methods() {
		for _, scope := range []Scope{ScopeTensor, ScopeGlobal} {
			p, ts, want, wantReport := streamCase(t, method, scope)
			m, err := NewMerger(method, p, ts)
			if err != nil {
				t.Fatal(err)
			}
			for i := m.Len() - 1; i >= 0; i-- { // any order
				out := tensor.Alloc(ts[i].Base.Len(), tensor.F32)
				if err := m.Tensor(i, out); err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(out.F32, want[i]) {
					t.Fatalf("%s scope %v tensor %d: streamed result differs from Run", method, scope, i)
				}
			}
			if got := m.Report(); !reflect.DeepEqual(got, wantReport) {
				t.Fatalf("%s scope %v: streamed report %v, Run's %v", method, scope, got, wantReport)
			}
		}
	}
}

func TestPerModelDensity(t *testing.T) {
	ts := one("w", make([]float32, 4), []float32{1, -2, 3, 0.5}, []float32{-1, -1, 2, -4})
	// model 0 keeps 1 entry (3), model 1 keeps 3 (−1 at index 0 wins the tie, 2, −4)
	p := Params{Lambda: 1, Densities: []float64{0.25, 0.75}}
	if err := Run("magnitude_prune", p, ts); err != nil {
		t.Fatal(err)
	}
	if want := []float32{-1, 0, 5, -4}; !slices.Equal(ts[0].Out.F32, want) {
		t.Fatalf("got %v, want %v", ts[0].Out.F32, want)
	}
	p.Densities = []float64{0.5}
	if err := Run("ties", p, ts); err == nil || !strings.Contains(err.Error(), "density has 1 values for 2 models") {
		t.Fatalf("got %v", err)
	}
}

// TestMergerTensorFrom: TensorFrom merges from the inputs it is given, bit
// for bit like Run, for every method. Where a call reads only its own
// tensor (not WholeModel), the views the Merger was made with hold NaN, so
// a read of them would fail the merge or change the bits.
func TestMergerTensorFrom(t *testing.T) {
	for _, method := range Methods() {
		p, ts, want, wantReport := streamCase(t, method, ScopeTensor)
		m, err := NewMerger(method, p, ts)
		if err != nil {
			t.Fatal(err)
		}
		if !m.WholeModel() { // poison the views the Merger holds
			m2 := make([]Tensor, len(ts))
			for i, x := range ts {
				m2[i] = x
				m2[i].Base = nanVec(x.Base.Len())
				m2[i].Models = nil
				for range x.Models {
					m2[i].Models = append(m2[i].Models, nanVec(x.Base.Len()))
				}
			}
			if m, err = NewMerger(method, p, m2); err != nil {
				t.Fatal(err)
			}
		}
		for i := m.Len() - 1; i >= 0; i-- {
			out := tensor.Alloc(ts[i].Base.Len(), tensor.F32)
			if err := m.TensorFrom(i, out, ts[i].Base, ts[i].Models); err != nil {
				t.Fatalf("%s tensor %d: %v", method, i, err)
			}
			if !slices.Equal(out.F32, want[i]) {
				t.Fatalf("%s tensor %d: TensorFrom's result differs from Run", method, i)
			}
		}
		if got := m.Report(); !reflect.DeepEqual(got, wantReport) {
			t.Fatalf("%s: report %v, Run's %v", method, got, wantReport)
		}
	}
}

func nanVec(n int) tensor.Vec {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(math.NaN())
	}
	return tensor.FromF32(x)
}

func TestMergerTensorFromRefusesOtherInputs(t *testing.T) {
	ts := one("w", []float32{0, 0}, []float32{1, 2}, []float32{3, 4})
	m, err := NewMerger("ties", Params{Density: 1, Lambda: 1}, ts)
	if err != nil {
		t.Fatal(err)
	}
	out := tensor.Alloc(2, tensor.F32)
	cases := []struct {
		name   string
		base   tensor.Vec
		models []tensor.Vec
		want   string
	}{
		{"model count", ts[0].Base, ts[0].Models[:1], `tensor "w": 1 models given, the merge has 2`},
		{"base length", tensor.FromF32([]float32{0}), ts[0].Models, `tensor "w": base given as`},
		{"model dtype", ts[0].Base, []tensor.Vec{ts[0].Models[0], tensor.Alloc(2, tensor.BF16)}, `tensor "w": model 1 given as`},
	}
	for _, tc := range cases {
		err := m.TensorFrom(0, out, tc.base, tc.models)
		if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%s: got %v, want an ErrInput containing %q", tc.name, err, tc.want)
		}
	}
	if err := m.TensorFrom(1, out, ts[0].Base, ts[0].Models); err == nil || !errors.Is(err, ErrInput) {
		t.Fatalf("index out of range: got %v", err)
	}
}

// sampleCase says whether a case of a large bit-for-bit matrix runs: every
// case normally, about one in three (chosen by a hash of its name, so no
// loop of the matrix is skipped as a whole) under the race detector, which
// makes these tests 5-10× slower. `make test-go` runs the package in both
// builds without the detector too, where every case runs.
func sampleCase(name string) bool {
	if !raceBuild {
		return true
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32()%3 == 0
}
