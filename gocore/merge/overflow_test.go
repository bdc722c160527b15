package merge

import (
	"errors"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// A merge never writes ±Inf: a result that overflows float32 from finite
// inputs, or does not fit a float16 output, is refused naming the tensor
// and the entry (issue 16, Low 12).
func TestOverflowRefused(t *testing.T) {
	f16 := func(base []float32, models ...[]float32) []Tensor {
		ts := one("w", base, models...)
		ts[0].Out = tensor.Alloc(len(base), tensor.F16)
		return ts
	}
	bf16 := func(base []float32, models ...[]float32) []Tensor {
		ts := one("w", base, models...)
		ts[0].Out = tensor.Alloc(len(base), tensor.BF16)
		return ts
	}
	cases := []struct {
		name, method string
		p            Params
		ts           []Tensor
		want         string // "" = accepted
	}{
		{"λ overflows float32", "task_arithmetic", Params{Lambda: 3e38}, one("w", []float32{0, 0}, []float32{0, 2}),
			`tensor "w": the merged value at flat index 1 is +Inf although every input is finite`},
		{"ties λ overflows float32", "ties", Params{Lambda: 3e38, Density: 1, Normalize: true}, one("w", []float32{0, 0}, []float32{0, 2}),
			`tensor "w": the merged value at flat index 1 is +Inf`},
		{"float16 output overflows", "task_arithmetic", Params{Lambda: 1}, f16([]float32{60000, 1}, []float32{65000, 1}, []float32{65000, 1}),
			`tensor "w": the merged value 70000 at flat index 0 does not fit the output dtype`},
		{"float16 output just fits", "task_arithmetic", Params{Lambda: 1}, f16([]float32{65000, 1}, []float32{65510, 1}), ""},
		{"bfloat16 output of a large finite value", "task_arithmetic", Params{Lambda: 1}, bf16([]float32{3e38}, []float32{3.3e38}), ""},
		{"bfloat16 output overflows", "task_arithmetic", Params{Lambda: 1}, bf16([]float32{3e38}, []float32{3.4e38}),
			"does not fit the output dtype"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Run(c.method, c.p, c.ts)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an ErrInput containing %q", err, c.want)
			}
		})
	}
}
