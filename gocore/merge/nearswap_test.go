package merge

import (
	"errors"
	"math"
	"strings"
	"testing"
)

// nearswapRef is the definition entry by entry, in float64 (the kernel
// must agree within float32 rounding).
func nearswapRef(t, b, x float64) float64 {
	w := 1.0
	if d := math.Abs(b - x); d != 0 {
		w = math.Min(math.Max(t/d, 0), 1)
	}
	return w*x + (1-w)*b
}

func TestNearSwap(t *testing.T) {
	base := []float32{0, 1, -2, 3, 5, 0.5}
	ft := []float32{0, 1.05, -1, 3, 9, -0.5}
	for _, th := range []float64{0.01, 0.1, 1, 10} {
		ts := one("w", base, ft)
		p := DefaultParams("nearswap")
		p.T = th
		if err := Run("nearswap", p, ts); err != nil {
			t.Fatal(err)
		}
		for j, got := range ts[0].Out.F32 {
			want := nearswapRef(th, float64(base[j]), float64(ft[j]))
			if math.Abs(float64(got)-want) > 1e-6*math.Max(1, math.Abs(want)) {
				t.Errorf("t=%v entry %d: got %v, want %v", th, j, got, want)
			}
		}
		// Equal entries take the fine-tuned value; far ones stay near the base.
		if ts[0].Out.F32[0] != 0 || ts[0].Out.F32[3] != 3 {
			t.Errorf("t=%v: equal entries changed: %v", th, ts[0].Out.F32)
		}
	}
}

func TestNearSwapInput(t *testing.T) {
	cases := []struct {
		name string
		v    Values
		n    int
		want string
	}{
		{"t required", Values{}, 1, "t must be given: nearswap has no default for it"},
		{"t positive", Values{Global: map[string]any{"t": 0.0}}, 1, "t must be > 0, got 0"},
		{"one model", Values{Global: map[string]any{"t": 0.1}}, 2, "nearswap merges exactly 1 models, got 2"},
		{"slerp's t range does not apply", Values{Global: map[string]any{"t": 5.0}}, 1, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, bad := Resolve("nearswap", c.n, c.v)
			got := strings.Join(Format(bad, NameWhere), "; ")
			if c.want == "" && got != "" || !strings.Contains(got, c.want) {
				t.Fatalf("problems %q, want %q", got, c.want)
			}
		})
	}
	// The Go API checks the same rule: DefaultParams leaves t unset (0).
	err := Run("nearswap", DefaultParams("nearswap"), one("w", []float32{0}, []float32{1}))
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "t must be > 0, got 0") {
		t.Fatalf("got %v", err)
	}
}
