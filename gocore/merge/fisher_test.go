package merge

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// stats wraps float32 slices as one tensor's statistics, one per model.
func stats(xs ...[]float32) []tensor.Vec {
	vs := make([]tensor.Vec, len(xs))
	for i, x := range xs {
		vs[i] = tensor.FromF32(x)
	}
	return vs
}

func TestFisherHandComputed(t *testing.T) {
	base := []float32{1, 1, 1, 1}
	m1 := []float32{2, 3, 4, 1} // τ1 = 1 2 3 0
	m2 := []float32{4, 5, 6, 1} // τ2 = 3 4 5 0
	f1 := []float32{1, 0, 3, 0}
	f2 := []float32{1, 1, 1, 0}
	cases := []struct {
		name string
		p    Params
		want []float32
	}{
		// index 0: equal Fishers → mean of τ; index 1: F1 is floored to
		// 1e-6 → (1e-6·2 + 4)/(1 + 1e-6); index 2: (3·3 + 5)/4; index 3:
		// nothing touched it, τ = 0.
		{"unweighted", Params{Lambda: 1, FisherFloor: 1e-6},
			[]float32{3, 1 + float32((1e-6*2+4)/(1+1e-6)), 1 + 3.5, 1}},
		// w = (3, 1): index 0 (3·1 + 3)/4 = 1.5; index 2 (9·3 + 5)/10 = 3.2.
		{"weights", Params{Lambda: 1, FisherFloor: 1e-6, Weights: []float32{3, 1}},
			[]float32{2.5, 1 + float32((3e-6*2+4)/(1+3e-6)), 4.2, 1}},
		// λ scales the merged task vector; a large floor makes it the mean.
		{"lambda and floor", Params{Lambda: 0.5, FisherFloor: 1e6},
			[]float32{2, 2.5, 3, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := one("w", base, m1, m2)
			tc.p.Statistics = map[string][]tensor.Vec{"w": stats(f1, f2)}
			if err := Run("fisher", tc.p, ts); err != nil {
				t.Fatal(err)
			}
			if !near(ts[0].Out.F32, tc.want, 1e-6) {
				t.Fatalf("got %v, want %v", ts[0].Out.F32, tc.want)
			}
		})
	}
}

// fisherExpected is the definition in float32, one rounding per operation,
// in model order.
func fisherExpected(base []float32, models, fishers [][]float32, w []float32, floor, lam float32) []float32 {
	out := make([]float32, len(base))
	for j := range base {
		var num, den float32
		for m := range models {
			f := fishers[m][j]
			if f < floor {
				f = floor
			}
			wf := w[m] * f
			num += float32(wf * float32(models[m][j]-base[j]))
			den += wf
		}
		out[j] = base[j] + float32(lam*float32(num/den))
	}
	return out
}

// randomFisher gives every tensor of ts Fisher values (exponential, a
// quarter of them exactly 0) and returns them.
func randomFisher(r *rand.Rand, ts []Tensor) map[string][]tensor.Vec {
	st := map[string][]tensor.Vec{}
	for _, t := range ts {
		for range t.Models {
			f := make([]float32, t.Base.Len())
			for i := range f {
				if r.IntN(4) > 0 {
					f[i] = float32(r.ExpFloat64())
				}
			}
			st[t.Name] = append(st[t.Name], tensor.FromF32(f))
		}
	}
	return st
}

func TestFisherMatchesDefinition(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ts := randomMerge(r, tensor.F32, [][]int{{5, 7}, {2*parallel.Chunk + 9}}, 3)
	st := randomFisher(r, ts)
	p := DefaultParams("fisher")
	p.Weights, p.Lambda, p.Statistics = []float32{0.5, 2, 1}, 0.8, st
	if err := Run("fisher", p, ts); err != nil {
		t.Fatal(err)
	}
	for _, tn := range ts {
		var models, fishers [][]float32
		for m, v := range tn.Models {
			models = append(models, v.F32)
			fishers = append(fishers, st[tn.Name][m].F32)
		}
		want := fisherExpected(tn.Base.F32, models, fishers, p.Weights, float32(p.FisherFloor), float32(p.Lambda))
		if !slices.Equal(tn.Out.F32, want) {
			t.Fatalf("%s: the engine differs from the definition", tn.Name)
		}
	}
}

// A tensor without statistics is task_arithmetic with normalize, bit for
// bit, and is listed in the report.
func TestDataAwareFallBackToWeightedMean(t *testing.T) {
	for _, method := range []string{"fisher", "regmean"} {
		t.Run(method, func(t *testing.T) {
			r := rand.New(rand.NewPCG(5, 6))
			ts := randomMerge(r, tensor.BF16, [][]int{{3, 4}, {parallel.Chunk + 5}}, 3)
			ta := randomMerge(rand.New(rand.NewPCG(5, 6)), tensor.BF16, [][]int{{3, 4}, {parallel.Chunk + 5}}, 3)
			p := DefaultParams(method)
			p.Weights, p.Lambda = []float32{1, 2, 0.5}, 0.7
			if method == "fisher" {
				p.Statistics = map[string][]tensor.Vec{"ta": stats(make([]float32, 12), make([]float32, 12), make([]float32, 12))}
			}
			rep, err := RunReport(method, p, ts)
			if err != nil {
				t.Fatal(err)
			}
			q := p
			q.Normalize, q.Statistics = true, nil
			if err := Run("task_arithmetic", q, ta); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ts[1].Out.U16, ta[1].Out.U16) {
				t.Fatal("the tensor without statistics is not task_arithmetic with normalize")
			}
			want := map[string]bool{"tb": true}
			if method == "regmean" {
				want["ta"] = true
			}
			if !reflect.DeepEqual(rep["plain_average"], want) {
				t.Fatalf("plain_average %v, want %v", rep["plain_average"], want)
			}
		})
	}
}

func TestFisherBadInput(t *testing.T) {
	nan := float32(math.NaN())
	good := func() map[string][]tensor.Vec {
		return map[string][]tensor.Vec{"enc.w": stats([]float32{1, 1}, []float32{1, 1})}
	}
	cases := []struct {
		name string
		edit func(p *Params)
		want string
	}{
		{"nan", func(p *Params) { p.Statistics["enc.w"][1].F32[1] = nan }, `tensor "enc.w": the Fisher values of model 1 have NaN at flat index 1`},
		{"negative", func(p *Params) { p.Statistics["enc.w"][0].F32[0] = -1 }, "model 0 have -1 at flat index 0"},
		{"inf", func(p *Params) { p.Statistics["enc.w"][0].F32[1] = float32(math.Inf(1)) }, "have +Inf"},
		{"length", func(p *Params) { p.Statistics["enc.w"][1] = tensor.FromF32([]float32{1}) }, `tensor "enc.w" for model 1 have 1 entries, the tensor 2`},
		{"models", func(p *Params) { p.Statistics["enc.w"] = p.Statistics["enc.w"][:1] }, "statistics for 1 models, expected 2"},
		{"unknown tensor", func(p *Params) { p.Statistics["dec.w"] = p.Statistics["enc.w"] }, `tensor "dec.w", which is not merged`},
		{"dtype", func(p *Params) { p.Statistics["enc.w"][0] = tensor.Alloc(2, tensor.BF16) }, "are bfloat16; they must be float32"},
		{"floor", func(p *Params) { p.FisherFloor = 0 }, "fisher_floor must lie in (0, 1e+30], got 0"},
		{"negative weight", func(p *Params) { p.Weights = []float32{2, -1} }, "weight 1 is -1"},
		{"zero weights", func(p *Params) { p.Weights = []float32{0, 0} }, "weights sum to 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("fisher")
			p.Statistics = good()
			tc.edit(&p)
			err := Run("fisher", p, one("enc.w", []float32{0, 0}, []float32{1, 2}, []float32{3, 4}))
			if err == nil || !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrInput containing %q", err, tc.want)
			}
		})
	}
}

// dataParams gives the data-aware methods statistics for ts: Fisher values,
// or Gram matrices for the 2-D tensors (and none for the others).
func dataParams(method string, ts []Tensor, seed uint64) Params {
	r := rand.New(rand.NewPCG(seed, 99))
	p := DefaultParams(method)
	p.Weights, p.Lambda = []float32{0.5, 1, 2}[:len(ts[0].Models)], 0.9
	if method == "fisher" {
		p.Statistics = randomFisher(r, ts)
		return p
	}
	p.Statistics = map[string][]tensor.Vec{}
	for _, t := range ts {
		if len(t.Shape) != 2 {
			continue
		}
		in := t.Shape[1]
		if t.Transposed {
			in = t.Shape[0]
		}
		for range t.Models {
			p.Statistics[t.Name] = append(p.Statistics[t.Name], tensor.FromF32(randomGram(r, in, 2*in)))
		}
	}
	return p
}

func TestDataAwareThreadsAndStreaming(t *testing.T) {
	shapes := [][]int{{7}, {40, 30}, {70, 70}, {3, 5, 2}}
	for _, method := range []string{"fisher", "regmean"} {
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
			var ref [][]float32
			var refRep map[string]any
			for _, th := range []int{1, 2, 5} {
				ts := randomMerge(rand.New(rand.NewPCG(3, 4)), dt, shapes, 3)
				ts[2].Transposed = true
				p := dataParams(method, ts, 1)
				p.Pool = parallel.Pool{Threads: th}
				rep, err := RunReport(method, p, ts)
				if err != nil {
					t.Fatal(err)
				}
				got := outputs(ts)
				if ref == nil {
					ref, refRep = got, rep
					// The Merger, tensor by tensor in reverse order, writes the same.
					m, err := NewMerger(method, p, ts)
					if err != nil {
						t.Fatal(err)
					}
					for i := m.Len() - 1; i >= 0; i-- {
						out := tensor.Alloc(ts[i].Base.Len(), dt)
						if err := m.Tensor(i, out); err != nil {
							t.Fatal(err)
						}
						if !slices.Equal(outputs([]Tensor{{Out: out}})[0], ref[i]) {
							t.Fatalf("%s %v tensor %d: streamed result differs from Run", method, dt, i)
						}
					}
					if !reflect.DeepEqual(m.Report(), rep) {
						t.Fatalf("%s: streamed report %v, Run's %v", method, m.Report(), rep)
					}
					continue
				}
				for i := range got {
					if !slices.Equal(got[i], ref[i]) {
						t.Fatalf("%s %v: %d threads differ from 1 thread (tensor %d)", method, dt, th, i)
					}
				}
				if !reflect.DeepEqual(rep, refRep) {
					t.Fatalf("%s: report differs with %d threads", method, th)
				}
			}
		}
	}
}
