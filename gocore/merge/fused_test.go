package merge

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// coarseMerge is randomMerge with values from a small set (and ±0), so that
// task-vector magnitudes tie at the top-k cuts, signs cancel and sums are
// zero: the fused pass's tie allowances and the election's corner cases.
func coarseMerge(r *rand.Rand, dt tensor.DType, shapes [][]int, T int) []Tensor {
	ts := randomMerge(r, dt, shapes, T)
	for i := range ts {
		t := &ts[i]
		for _, v := range append([]tensor.Vec{t.Base}, t.Models...) {
			x := make([]float32, v.Len())
			for j := range x {
				switch r.IntN(6) {
				case 0:
					x[j] = float32(math.Copysign(0, -1))
				default:
					x[j] = float32(r.IntN(9)-4) * 0.25
				}
			}
			v.Store(x, 0)
		}
	}
	return ts
}

// TestFusedPassesMatchGeneralPath compares the fused merge pass of the TIES
// family and DARE (mergeFused), model_stock's and the task-arithmetic methods' direct
// pass with mergeChunk's general path (generalOnly), bit for bit, over
// dtypes, parameters that change the kernel (Normalize, Rescale, negative
// and zero weights, densities 0 and 1, Breadcrumbs' γ, consensus' K and
// TALL λ) and inputs with many ties.
func TestFusedPassesMatchGeneralPath(t *testing.T) {
	methods := []string{"ties", "magnitude_prune", "breadcrumbs", "breadcrumbs_ties",
		"consensus_ta", "consensus_ties", "model_stock", "task_arithmetic", "linear",
		"dare_ties", "dare_linear"}
	type variant struct {
		name string
		set  func(p *Params)
	}
	variants := []variant{
		{"default", func(*Params) {}},
		{"normalize", func(p *Params) { p.Normalize = true }},
		{"weights", func(p *Params) { p.Weights = []float32{1, -0.5, 0} }},
		{"weights+normalize", func(p *Params) { p.Weights, p.Normalize = []float32{0.25, 2, 0.5}, true }},
		{"rescale", func(p *Params) { p.Rescale = true }},
		{"density1", func(p *Params) { p.Density = 1 }},
		{"density0.01", func(p *Params) { p.Density = 0.01 }},
		{"gamma", func(p *Params) { p.Gamma = 0.3 }},
		{"consensus", func(p *Params) { p.K, p.TallLambda = 1, 0 }},
		{"global", func(p *Params) { p.Scope = ScopeGlobal }},
	}
	defer func() { generalOnly = false }()
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		for _, method := range methods {
			for _, v := range variants {
				for _, data := range []string{"normal", "coarse"} {
					if !sampleCase(fmt.Sprint(dt, method, v.name, data)) {
						continue
					}
					p := testParams(method)
					p.Lambda, p.Density, p.Seed = 0.7, 0.3, 9
					v.set(&p)
					if bad := checkValues(methodSpecs[method], &p, 3); len(bad) > 0 {
						continue // a parameter the method does not take
					}
					var res [2][][]float32
					var errs [2]error
					for i, general := range []bool{true, false} {
						generalOnly = general
						r := rand.New(rand.NewPCG(5, 6))
						var ts []Tensor
						if data == "coarse" {
							ts = coarseMerge(r, dt, testShapes(dt == tensor.F32), 3)
						} else {
							ts = randomMerge(r, dt, testShapes(dt == tensor.F32), 3)
						}
						p.Pool = parallel.Pool{Threads: 2}
						errs[i] = Run(method, p, ts)
						res[i] = outputs(ts)
					}
					if fmt.Sprint(errs[0]) != fmt.Sprint(errs[1]) {
						t.Fatalf("%v %s %s %s: fused pass: %v; general path: %v", dt, method, v.name, data, errs[1], errs[0])
					}
					if errs[0] != nil {
						continue // refused alike (a combination the method does not take)
					}
					for ti := range res[0] {
						if !slices.EqualFunc(res[0][ti], res[1][ti], func(a, b float32) bool {
							return math.Float32bits(a) == math.Float32bits(b)
						}) {
							t.Fatalf("%v %s %s %s: tensor %d differs from the general path", dt, method, v.name, data, ti)
						}
					}
				}
			}
		}
	}
}

// TestFusedPassesRefuseBadInput checks that the fused passes name the same
// non-finite input, or the same overflowing result, as the general path.
func TestFusedPassesRefuseBadInput(t *testing.T) {
	defer func() { generalOnly = false }()
	for _, method := range []string{"ties", "breadcrumbs", "consensus_ta", "consensus_ties", "model_stock", "dare_ties"} {
		for _, bad := range []string{"base", "model", "overflow", "base/bf16", "model/bf16"} {
			var msgs [2]string
			for i, general := range []bool{true, false} {
				generalOnly = general
				dt := tensor.F32
				if strings.HasSuffix(bad, "/bf16") {
					dt = tensor.BF16
				}
				ts := randomMerge(rand.New(rand.NewPCG(7, 8)), dt, [][]int{{3, 2*parallel.Chunk + 3}}, 3)
				p := testParams(method)
				p.Density = 0.5
				switch bad {
				case "base":
					ts[0].Base.F32[parallel.Chunk+5] = float32(math.Inf(-1))
				case "model":
					ts[0].Models[2].F32[2*parallel.Chunk+1] = float32(math.NaN())
				case "base/bf16":
					ts[0].Base.U16[parallel.Chunk+5] = 0xff80 // −Inf
				case "model/bf16":
					ts[0].Models[2].U16[2*parallel.Chunk+1] = 0x7fc0 // NaN
				case "overflow":
					p.Lambda = 3e38
				}
				err := Run(method, p, ts)
				if err == nil {
					if bad == "overflow" && method == "model_stock" {
						continue // λ is not used
					}
					t.Fatalf("%s %s: no error", method, bad)
				}
				msgs[i] = err.Error()
			}
			if msgs[0] != msgs[1] {
				t.Fatalf("%s %s: fused %q, general %q", method, bad, msgs[1], msgs[0])
			}
			if msgs[0] != "" && !strings.Contains(msgs[0], "tensor") {
				t.Fatalf("%s %s: %q does not name the tensor", method, bad, msgs[0])
			}
		}
	}
}

// TestFusedPlanCoversTheFamily checks which methods take the fused pass.
func TestFusedPlanCoversTheFamily(t *testing.T) {
	for _, method := range []string{"ties", "magnitude_prune", "breadcrumbs", "breadcrumbs_ties", "consensus_ta", "consensus_ties"} {
		ts := randomMerge(rand.New(rand.NewPCG(1, 1)), tensor.F32, [][]int{{7}}, 3)
		e, err := newEngine(registry[method], testParams(method), ts)
		if err != nil {
			t.Fatal(err)
		}
		if e.fused == nil {
			t.Fatalf("%s has no fused pass", method)
		}
	}
	for _, method := range []string{"dare_ties", "dare_linear"} {
		ts := randomMerge(rand.New(rand.NewPCG(1, 1)), tensor.F32, [][]int{{7}}, 3)
		e, err := newEngine(registry[method], testParams(method), ts)
		if err != nil {
			t.Fatal(err)
		}
		if (e.fused != nil) != vec.DropVectorized() {
			t.Fatalf("%s: fused pass %v, want it exactly where the draw is vectorised (%v)", method, e.fused != nil, vec.DropVectorized())
		}
	}
	for _, method := range []string{"della", "pcb", "neuro"} {
		ts := randomMerge(rand.New(rand.NewPCG(1, 1)), tensor.F32, [][]int{{7}}, 3)
		e, err := newEngine(registry[method], testParams(method), ts)
		if err != nil {
			t.Fatal(fmt.Errorf("%s: %w", method, err))
		}
		if e.fused != nil {
			t.Fatalf("%s takes the fused pass, which does not implement it", method)
		}
	}
}
