package merge

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// karcherRef is mergekit's karcher iteration written on the vectors in
// float64 (the kernel runs it on their Gram matrix): xs are the models,
// then the base, equally weighted.
func karcherRef(xs [][]float32, maxIter int, tol float64) []float64 {
	N, n := len(xs), len(xs[0])
	norm := make([]float64, N)
	var units [][]float64
	for k, x := range xs {
		v := make([]float64, n)
		for j := range n {
			v[j] = float64(x[j])
		}
		norm[k] = math.Sqrt(dotF64(v, v))
		if norm[k] > tol {
			for j := range v {
				v[j] /= norm[k]
			}
			units = append(units, v)
		}
	}
	out := make([]float64, n)
	if len(units) == 0 {
		return out
	}
	a := 1 / float64(len(units))
	mean := make([]float64, n)
	for _, u := range units {
		for j := range n {
			mean[j] += a * u[j]
		}
	}
	if mn := math.Sqrt(dotF64(mean, mean)); mn < tol {
		copy(mean, units[0])
	} else {
		for j := range mean {
			mean[j] /= mn
		}
	}
	for range maxIter {
		tangent := make([]float64, n)
		for _, u := range units {
			dot := min(max(dotF64(mean, u), -1), 1)
			th := math.Acos(dot)
			if th < tol {
				continue
			}
			f := a * th / math.Sin(th)
			for j := range n {
				tangent[j] += f * (u[j] - dot*mean[j])
			}
		}
		tn := math.Sqrt(dotF64(tangent, tangent))
		if tn < tol {
			break
		}
		for j := range n {
			mean[j] = math.Cos(tn)*mean[j] + math.Sin(tn)*tangent[j]/tn
		}
		if un := math.Sqrt(dotF64(mean, mean)); un > tol {
			for j := range mean {
				mean[j] /= un
			}
		}
	}
	var scale float64
	for _, x := range norm {
		scale += x / float64(N)
	}
	for j := range n {
		out[j] = scale * mean[j]
	}
	return out
}

func TestKarcher(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	base := randVec(r, 40000, 0.02) // three chunks
	ft := func(scale float64) []float32 {
		v := randVec(r, len(base), scale)
		for j := range v {
			v[j] += base[j]
		}
		return v
	}
	a, b, c := ft(0.02), ft(0.02), ft(0.002)
	zero := make([]float32, len(base))
	cases := []struct {
		name    string
		base    []float32
		models  [][]float32
		maxIter int
		tol     float64
	}{
		{"base and one model", base, [][]float32{a}, 10, 1e-5},
		{"base and three models", base, [][]float32{a, b, c}, 10, 1e-5},
		{"no steps: the normalised mean", base, [][]float32{a, b}, 0, 1e-5},
		{"one step", base, [][]float32{a, b, c}, 1, 1e-5},
		{"coarse tol stops early", base, [][]float32{a, b}, 10, 1e-2},
		{"a zero model is left out but counts in the scale", base, [][]float32{a, zero}, 10, 1e-5},
		{"all zero", zero, [][]float32{zero, zero}, 10, 1e-5},
		{"orthogonal", []float32{1, 0, 0}, [][]float32{{0, 2, 0}, {0, 0, 3}}, 10, 1e-5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("karcher")
			p.MaxIter, p.Tol = tc.maxIter, tc.tol
			ts := one("blk.0.w", tc.base, tc.models...)
			if err := Run("karcher", p, ts); err != nil {
				t.Fatal(err)
			}
			want := karcherRef(append(append([][]float32{}, tc.models...), tc.base), tc.maxIter, tc.tol)
			for j, got := range ts[0].Out.F32 {
				scale := float32(math.Abs(float64(tc.base[j])))
				for _, m := range tc.models {
					scale = max(scale, float32(math.Abs(float64(m[j]))))
				}
				if !halfUlp(got, want[j], scale) {
					t.Fatalf("entry %d: got %v, want %v", j, got, want[j])
				}
			}
		})
	}
}

func TestKarcherInput(t *testing.T) {
	cases := []struct {
		name string
		v    Values
		want string
	}{
		{"max_iter whole", Values{Global: map[string]any{"max_iter": 2.5}}, "max_iter must be a whole number, got 2.5"},
		{"max_iter not negative", Values{Global: map[string]any{"max_iter": -1}}, "max_iter must be ≥ 0, got -1"},
		{"tol not negative", Values{Global: map[string]any{"tol": -1e-3}}, "tol must be ≥ 0, got -0.001"},
		{"multislerp's eps is not its own", Values{Global: map[string]any{"eps": 0.1}}, "eps is not a parameter of karcher (it belongs to multislerp)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, bad := Resolve("karcher", 2, c.v)
			if got := strings.Join(Format(bad, NameWhere), "; "); !strings.Contains(got, c.want) || got == "" {
				t.Fatalf("problems %q, want %q", got, c.want)
			}
		})
	}
	p, bad := Resolve("karcher", 2, Values{})
	if len(bad) > 0 || p.MaxIter != 10 || p.Tol != 1e-5 {
		t.Fatalf("defaults: %+v, %v", p, bad)
	}
}
