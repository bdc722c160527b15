package merge

import (
	"math"
	"strings"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Passthrough returns the model's tensor bit for bit (signed zeros,
// subnormals) with the default scale, float32(x·float32(s)) with one, and
// takes exactly one model.
func TestPassthrough(t *testing.T) {
	x := []float32{1.5, float32(math.Copysign(0, -1)), 3e-41, -7.25, 0.1, 123456.78}
	for _, tc := range []struct {
		name   string
		params func(p *Params)
		scale  float32
	}{
		{"default", func(*Params) {}, 1},
		{"global scale", func(p *Params) { p.Scale = 0.7 }, 0.7},
		{"per-model scale", func(p *Params) { p.Scale, p.Scales = 9, []float64{-1.3} }, -1.3},
		{"zero", func(p *Params) { p.Scale = 0 }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultParams("passthrough")
			tc.params(&p)
			base := tensor.Alloc(len(x), tensor.F32)
			for i := range base.F32 {
				base.F32[i] = 99 // not read
			}
			m := tensor.Alloc(len(x), tensor.F32)
			copy(m.F32, x)
			out := tensor.Alloc(len(x), tensor.F32)
			if err := Run("passthrough", p, []Tensor{{Name: "w", Shape: []int{2, 3}, Base: base, Models: []tensor.Vec{m}, Out: out}}); err != nil {
				t.Fatal(err)
			}
			for i, v := range x {
				if want := v * tc.scale; math.Float32bits(out.F32[i]) != math.Float32bits(want) {
					t.Fatalf("entry %d: %v, want %v", i, out.F32[i], want)
				}
			}
		})
	}
	p := DefaultParams("passthrough")
	two := []tensor.Vec{tensor.Alloc(2, tensor.F32), tensor.Alloc(2, tensor.F32)}
	err := Run("passthrough", p, []Tensor{{Name: "w", Shape: []int{2}, Base: tensor.Alloc(2, tensor.F32), Models: two, Out: tensor.Alloc(2, tensor.F32)}})
	if err == nil || !strings.Contains(err.Error(), "passthrough merges exactly 1 models") {
		t.Fatalf("two models: %v", err)
	}
}

// scale is read from configs like mergekit's: one value, or per model.
func TestPassthroughScaleResolves(t *testing.T) {
	p, bad := Resolve("passthrough", 1, Values{Global: map[string]any{"scale": 0.5}})
	if len(bad) > 0 || p.Scale != 0.5 || p.Scales != nil {
		t.Fatalf("global: %+v %v", p.Scale, bad)
	}
	p, bad = Resolve("passthrough", 1, Values{Global: map[string]any{}, Models: []map[string]any{{"scale": 2.0}}})
	if len(bad) > 0 || len(p.Scales) != 1 || p.Scales[0] != 2 {
		t.Fatalf("per model: %v %v", p.Scales, bad)
	}
	if p, _ := Resolve("passthrough", 1, Values{Global: map[string]any{}}); p.Scale != 1 {
		t.Fatalf("default scale %v", p.Scale)
	}
}
