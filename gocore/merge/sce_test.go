package merge

import (
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

// sceRef is mergekit's sce written entry by entry: variances, weights and
// sums in float64, the selection by sorting (ties by lower index).
func sceRef(base []float32, models [][]float32, topk float64) []float64 {
	n, T := len(base), len(models)
	tau := make([][]float64, T)
	for t, m := range models {
		tau[t] = make([]float64, n)
		for j := range n {
			tau[t][j] = float64(m[j] - base[j])
		}
	}
	if topk < 1 {
		vars := make([]float32, n)
		nz := 0
		for j := range n {
			var mean, v float64
			for t := range T {
				mean += tau[t][j]
			}
			mean /= float64(T)
			for t := range T {
				v += (tau[t][j] - mean) * (tau[t][j] - mean)
			}
			vars[j] = float32(v / float64(T))
			if vars[j] != 0 {
				nz++
			}
		}
		k := int(float32(nz) * float32(topk))
		idx := make([]int, n)
		for j := range idx {
			idx[j] = j
		}
		sort.SliceStable(idx, func(a, b int) bool { return vars[idx[a]] > vars[idx[b]] })
		for _, j := range idx[k:] {
			for t := range T {
				tau[t][j] = 0
			}
		}
	}
	w := make([]float64, T)
	var sum float64
	for t := range T {
		for j := range n {
			w[t] += tau[t][j] * tau[t][j] / float64(n)
		}
		sum += w[t]
	}
	for t := range w {
		if sum < 1e-6 {
			w[t] = 1 / float64(T)
		} else {
			w[t] /= sum
		}
	}
	out := make([]float64, n)
	for j := range n {
		var s, num, den float64
		for t := range T {
			s += tau[t][j]
		}
		for t := range T {
			if v := tau[t][j]; v != 0 && (v > 0) == (s >= 0) {
				num += w[t] * v
				den += w[t]
			}
		}
		out[j] = float64(base[j]) + num/math.Max(den, 1e-6)
	}
	return out
}

func TestSCE(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	base := randVec(r, 40000, 0.02) // three chunks
	ft := func() []float32 {
		v := randVec(r, len(base), 0.02)
		for j := range v {
			v[j] += base[j]
		}
		return v
	}
	a, b, c := ft(), ft(), ft()
	cases := []struct {
		name   string
		base   []float32
		models [][]float32
		topk   float64
	}{
		{"all kept", base, [][]float32{a, b, c}, 1},
		{"top half by variance", base, [][]float32{a, b, c}, 0.5},
		{"top tenth, two models", base, [][]float32{a, b}, 0.1},
		{"nothing kept is the base", base, [][]float32{a, b}, 0},
		{"hand-sized", []float32{0, 0, 0, 0}, [][]float32{{1, -2, 3, 0}, {2, 1, -3, 0}, {-1, 1, 1, 0}}, 0.7},
		{"tiny task vectors: equal weights", []float32{1, 1}, [][]float32{{1.0001, 1}, {1, 0.9999}}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("sce")
			p.SelectTopK = tc.topk
			ts := one("blk.0.w", tc.base, tc.models...)
			if err := Run("sce", p, ts); err != nil {
				t.Fatal(err)
			}
			want := sceRef(tc.base, tc.models, tc.topk)
			for j, got := range ts[0].Out.F32 {
				// float32 operations against float64: a few roundings of
				// terms no larger than the inputs.
				scale := math.Abs(float64(tc.base[j]))
				for _, m := range tc.models {
					scale = math.Max(scale, math.Abs(float64(m[j]-tc.base[j])))
				}
				if math.Abs(float64(got)-want[j]) > 4e-7*math.Max(scale, math.Abs(want[j])) {
					t.Fatalf("entry %d: got %v, want %v", j, got, want[j])
				}
			}
		})
	}
}

func TestSCEInput(t *testing.T) {
	for _, c := range []struct {
		v    Values
		want string
	}{
		{Values{Global: map[string]any{"select_topk": 1.5}}, "select_topk must lie in [0, 1], got 1.5"},
		{Values{Global: map[string]any{"int8_mask": 1}}, "int8_mask must be true or false, got 1"},
		{Values{Global: map[string]any{"int8_mask": true, "select_topk": 0.3}}, ""},
	} {
		p, bad := Resolve("sce", 3, c.v)
		got := strings.Join(Format(bad, NameWhere), "; ")
		if c.want == "" && got != "" || !strings.Contains(got, c.want) {
			t.Fatalf("problems %q, want %q", got, c.want)
		}
		if c.want == "" && p.SelectTopK != 0.3 {
			t.Fatalf("select_topk %v", p.SelectTopK)
		}
	}
	if p := DefaultParams("sce"); p.SelectTopK != 1 {
		t.Fatalf("default select_topk %v", p.SelectTopK)
	}
}
