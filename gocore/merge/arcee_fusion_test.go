package merge

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// arceeFusionRef is mergekit's arcee_fusion in float64: per entry whether
// θ₁ is taken, and the importances and fence (to tell entries at the fence).
func arceeFusionRef(base, x []float32, cols int) (take []bool, imp []float64, fence float64) {
	n := len(base)
	imp = make([]float64, n)
	soft := func(v []float32) []float64 {
		m := math.Inf(-1)
		for _, a := range v {
			m = math.Max(m, float64(a))
		}
		out := make([]float64, len(v))
		var s float64
		for j, a := range v {
			out[j] = math.Exp(float64(a) - m)
			s += out[j]
		}
		for j := range out {
			out[j] = out[j]/s + 1e-8
		}
		return out
	}
	for r := 0; r < n/cols; r++ {
		p, q := soft(x[r*cols:(r+1)*cols]), soft(base[r*cols:(r+1)*cols])
		var kl float64
		for j := range p {
			kl += p[j] * math.Log(p[j]/q[j])
		}
		for j := r * cols; j < (r+1)*cols; j++ {
			imp[j] = math.Abs(float64(x[j])-float64(base[j])) * kl
		}
	}
	sorted := append([]float64(nil), imp...)
	sort.Float64s(sorted)
	at := func(q float64) float64 { return sorted[int(q*float64(n-1))] }
	fence = at(0.5) + 1.5*(at(0.75)-at(0.25))
	take = make([]bool, n)
	for j := range take {
		take[j] = imp[j] >= fence
	}
	return take, imp, fence
}

func TestArceeFusion(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	base := randVec(r, 40*1024, 0.5) // three chunks
	x := randVec(r, len(base), 0.5)
	for j := range x {
		x[j] = base[j] + 0.1*x[j]
		if j%7 == 0 {
			x[j] = base[j] // untouched entries have importance 0
		}
	}
	cases := []struct {
		name  string
		shape []int
		cols  int
	}{
		{"rows of 64", []int{640, 64}, 64},
		{"rows of 1024", []int{40, 1024}, 1024},
		{"1-D: one row", []int{40 * 1024}, 40 * 1024},
		{"no shape: one row", nil, 40 * 1024},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := one("blk.0.w", base, x)
			ts[0].Shape = tc.shape
			if err := Run("arcee_fusion", DefaultParams("arcee_fusion"), ts); err != nil {
				t.Fatal(err)
			}
			take, imp, fence := arceeFusionRef(base, x, tc.cols)
			taken := 0
			for j, got := range ts[0].Out.F32 {
				b := base[j]
				if take[j] {
					taken++
				}
				want := b
				if take[j] {
					want = b + (x[j] - b)
				}
				if got != want && math.Abs(imp[j]-fence) > 1e-5*math.Abs(fence) {
					t.Fatalf("entry %d (importance %v, fence %v): got %v, want %v", j, imp[j], fence, got, want)
				}
			}
			if taken == 0 || taken == len(base) {
				t.Fatalf("degenerate case: %d of %d entries taken", taken, len(base))
			}
		})
	}
}

func TestArceeFusionEqualModels(t *testing.T) {
	// KL 0: every importance is 0 and reaches the fence 0; θ₀ + 0 = θ₀.
	base := []float32{1, -2, 3, 0.5}
	ts := []Tensor{{Name: "w", Shape: []int{2, 2}, Base: tensor.FromF32(base),
		Models: []tensor.Vec{tensor.FromF32(append([]float32(nil), base...))},
		Out:    tensor.FromF32(make([]float32, 4))}}
	if err := Run("arcee_fusion", DefaultParams("arcee_fusion"), ts); err != nil {
		t.Fatal(err)
	}
	for j, v := range ts[0].Out.F32 {
		if v != base[j] {
			t.Fatalf("entry %d: got %v, want %v", j, v, base[j])
		}
	}
	if _, bad := Resolve("arcee_fusion", 2, Values{}); len(bad) == 0 {
		t.Fatal("two models accepted")
	}
}

// TestFusionFenceMatchesSort checks the radix-selected fence against the
// float32 sort it replaced, for sizes around topk.SmallN and one, with
// repeated and negative importances (negative KL values stand in for the
// rounding that can make a row's KL slightly negative).
func TestFusionFenceMatchesSort(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		cols int
		neg  bool
		ties bool
	}{
		{"one", 1, 1, false, false},
		{"two", 2, 2, false, false},
		{"three", 3, 3, true, false},
		{"small", 1000, 10, false, true},
		{"at SmallN", 4096, 64, true, true},
		{"above SmallN", 4097, 17, true, false},
		{"several chunks", 3*16384 + 8, 8, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(tc.n), 3))
			x, b := make([]float32, tc.n), make([]float32, tc.n)
			for j := range x {
				b[j] = float32(r.NormFloat64())
				x[j] = b[j] + float32(r.NormFloat64())*0.1
				if tc.ties && j%3 == 0 {
					x[j] = b[j] + 0.25 // equal |x − b| within a row: equal importances
				}
			}
			st := afState{cols: tc.cols, kl: make([]float32, tc.n/tc.cols)}
			for i := range st.kl {
				st.kl[i] = float32(r.Float64())
				if tc.neg && i%4 == 1 {
					st.kl[i] = -st.kl[i]
				}
			}
			imp := make([]float32, tc.n)
			for j := range imp {
				imp[j] = fusionImportance(x[j], b[j], st.kl[j/tc.cols])
			}
			sort.Slice(imp, func(i, j int) bool { return imp[i] < imp[j] })
			at := func(q float32) float32 { return imp[int64(q*float32(tc.n-1))] }
			want := at(0.5) + float32(1.5*(at(0.75)-at(0.25)))
			for _, threads := range []int{1, 2} {
				got := fusionFence(parallel.Pool{Threads: threads}, x, b, &st)
				if math.Float32bits(got) != math.Float32bits(want) {
					t.Fatalf("threads %d: fence %v (%#x), sorting gives %v (%#x)", threads, got,
						math.Float32bits(got), want, math.Float32bits(want))
				}
			}
		})
	}
}
