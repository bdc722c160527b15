package merge

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// multislerpRef is mergekit's multislerp written entry by entry in float64
// on the vectors themselves (not on their Gram matrix, as the kernel is):
// x_t = float32(θ_t − θ₀), as both form it.
func multislerpRef(base []float32, models [][]float32, w []float64, normalize bool, eps float64) ([]float64, error) {
	n := len(base)
	out := make([]float64, n)
	if len(models) == 1 {
		for j, v := range models[0] {
			out[j] = float64(v)
		}
		return out, nil
	}
	w = append([]float64(nil), w...)
	if normalize { // float32 weights divided by their float32 sum, as mergekit
		var s float32
		for _, v := range w {
			s += float32(v)
		}
		for i := range w {
			w[i] = float64(float32(w[i]) / s)
		}
	}
	T := len(models)
	x := make([][]float64, T)
	u := make([][]float64, T)
	norm := make([]float64, T)
	for t, m := range models {
		x[t], u[t] = make([]float64, n), make([]float64, n)
		for j := range n {
			x[t][j] = float64(m[j] - base[j])
			norm[t] += x[t][j] * x[t][j]
		}
		norm[t] = math.Sqrt(norm[t])
		for j := range n {
			u[t][j] = x[t][j] / (norm[t] + eps)
		}
	}
	mean := make([]float64, n)
	for t := range T {
		for j := range n {
			mean[j] += w[t] * u[t][j]
		}
	}
	mn := math.Sqrt(dotF64(mean, mean))
	if mn < eps {
		if T != 2 {
			return nil, errors.New("zero mean direction")
		}
		for j := range n {
			out[j] = float64(base[j]) + w[0]*x[0][j] + w[1]*x[1][j]
		}
		return out, nil
	}
	for j := range mean {
		mean[j] /= mn
	}
	tangent := make([]float64, n)
	var avg float64
	for t := range T {
		d := dotF64(u[t], mean)
		for j := range n {
			tangent[j] += w[t] * (u[t][j] - d*mean[j])
		}
		avg += norm[t] * w[t]
	}
	r := math.Sqrt(dotF64(tangent, tangent)) + eps
	for j := range n {
		out[j] = float64(base[j]) + avg*(mean[j]*math.Cos(r)+tangent[j]*math.Sin(r)/r)
	}
	return out, nil
}

func dotF64(a, b []float64) float64 {
	var s float64
	for i := range a {
		s += a[i] * b[i]
	}
	return s
}

// halfUlp reports whether got is within half an ulp (plus float64 noise) of
// want, in ulps of the largest of |want| and the inputs' magnitudes at
// that entry: the kernel rounds its float64 value once.
func halfUlp(got float32, want float64, scale float32) bool {
	s := max(float32(math.Abs(want)), scale)
	ulp := float64(math.Nextafter32(s, float32(math.Inf(1))) - s)
	return math.Abs(float64(got)-want) <= 0.501*ulp
}

func randVec(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

func TestMultislerp(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := randVec(r, 40000, 0.02) // three chunks
	ft := func() []float32 {
		v := randVec(r, len(base), 0.02)
		for j := range v {
			v[j] += base[j]
		}
		return v
	}
	a, b, c := ft(), ft(), ft()
	small := []float32{1, 2, 3, -1}
	neg := func(base, x []float32) []float32 { // the task vector reversed
		out := make([]float32, len(x))
		for j := range x {
			out[j] = base[j] - (x[j] - base[j])
		}
		return out
	}
	cases := []struct {
		name    string
		base    []float32
		models  [][]float32
		w       []float32
		raw     bool
		eps     float64
		wantErr string
	}{
		{"two models", base, [][]float32{a, b}, nil, false, 1e-8, ""},
		{"three weighted", base, [][]float32{a, b, c}, []float32{0.2, 0.5, 1.3}, false, 1e-8, ""},
		{"raw weights", base, [][]float32{a, b, c}, []float32{0.2, 0.5, 1.3}, true, 1e-8, ""},
		{"large eps", base, [][]float32{a, b}, []float32{1, 3}, false, 0.5, ""},
		{"one model is itself", base, [][]float32{a}, nil, false, 1e-8, ""},
		{"antipodal pair falls back to the weighted sum", small, [][]float32{{2, 3, 4, 0}, neg(small, []float32{2, 3, 4, 0})}, []float32{1, 1}, false, 1e-8, ""},
		{"antipodal three refused", small, [][]float32{{2, 3, 4, 0}, neg(small, []float32{2, 3, 4, 0}), small}, nil, false, 1e-8,
			"the weighted sum of the unit task vectors is zero"},
		{"weights summing to 0 refused", small, [][]float32{{2, 3, 4, 0}, {1, 1, 1, 1}}, []float32{1, -1}, false, 1e-8,
			"weights sum to 0, cannot normalize"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("multislerp")
			p.Weights, p.RawWeights, p.Eps = tc.w, tc.raw, tc.eps
			ts := one("blk.0.w", tc.base, tc.models...)
			err := Run("multislerp", p, ts)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			w := make([]float64, len(tc.models))
			for i := range w {
				w[i] = 1
				if tc.w != nil {
					w[i] = float64(tc.w[i])
				}
			}
			want, err := multislerpRef(tc.base, tc.models, w, !tc.raw, tc.eps)
			if err != nil {
				t.Fatal(err)
			}
			for j, got := range ts[0].Out.F32 {
				scale := float32(math.Abs(float64(tc.base[j])))
				for _, m := range tc.models {
					scale = max(scale, float32(math.Abs(float64(m[j]))), float32(math.Abs(float64(m[j]-tc.base[j]))))
				}
				if !halfUlp(got, want[j], scale) {
					t.Fatalf("entry %d: got %v, want %v", j, got, want[j])
				}
			}
		})
	}
}

func TestMultislerpInput(t *testing.T) {
	cases := []struct {
		name string
		v    Values
		want string
	}{
		{"eps positive", Values{Global: map[string]any{"eps": 0.0}}, "eps must be > 0, got 0"},
		{"normalize_weights boolean", Values{Global: map[string]any{"normalize_weights": 1.0}}, "normalize_weights must be true or false, got 1"},
		{"karcher's tol is not its own", Values{Global: map[string]any{"tol": 0.1}}, "tol is not a parameter of multislerp (it belongs to karcher)"},
		{"defaults", Values{}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, bad := Resolve("multislerp", 2, c.v)
			got := strings.Join(Format(bad, NameWhere), "; ")
			if c.want == "" && got != "" || !strings.Contains(got, c.want) {
				t.Fatalf("problems %q, want %q", got, c.want)
			}
			if c.want == "" && (p.RawWeights || p.Eps != 1e-8) {
				t.Fatalf("defaults: raw %v, eps %v", p.RawWeights, p.Eps)
			}
		})
	}
	p, bad := Resolve("multislerp", 2, Values{Global: map[string]any{"normalize_weights": false, "eps": 1e-6}})
	if len(bad) > 0 || !p.RawWeights || p.Eps != 1e-6 {
		t.Fatalf("got %+v, %v", p, bad)
	}
}
