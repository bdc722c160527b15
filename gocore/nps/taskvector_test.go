package nps

import (
	"errors"
	"math"
	"testing"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

func TestTaskVector(t *testing.T) {
	base := []float32{1, -2, 0.5, 0}
	ft := []float32{1.5, -2, 0, float32(math.Copysign(0, -1))}
	tests := []struct {
		name string
		ft   tensor.Vec
		want []float32
	}{
		{"f32", tensor.FromF32(ft), []float32{0.5, 0, -0.5, float32(math.Copysign(0, -1))}},
		// bf16 holds these values exactly: the difference is the widened one.
		{"bf16", bf16(ft), []float32{0.5, 0, -0.5, float32(math.Copysign(0, -1))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tau, scratch, err := TaskVector("w", tensor.FromF32(base), tc.ft)
			if err != nil {
				t.Fatal(err)
			}
			for i := range tau {
				if math.Float32bits(tau[i]) != math.Float32bits(tc.want[i]) {
					t.Errorf("tau[%d] = %v, want %v", i, tau[i], tc.want[i])
				}
				if scratch[i] != base[i] {
					t.Errorf("scratch[%d] = %v, want the base's %v", i, scratch[i], base[i])
				}
			}
		})
	}
	_, _, err := TaskVector("w", tensor.FromF32(base), tensor.FromF32(ft[:3]))
	if !errors.Is(err, ErrInput) || err.Error() != `invalid NPS input: tensor "w": 3 elements in the fine-tuned model, 4 in the base` {
		t.Errorf("length mismatch: got %v", err)
	}
}

func bf16(x []float32) tensor.Vec {
	v := tensor.Alloc(len(x), tensor.BF16)
	v.Store(x, 0)
	return v
}

// TestTaskBuildInto: a Task built into outputs of every kernel dtype gives
// Decompose + Build's τ_NPS, rounded to each output's dtype; float32
// outputs are written in place.
func TestTaskBuildInto(t *testing.T) {
	const rows, cols = 24, 20
	base, ft := make([]float32, rows*cols), make([]float32, rows*cols)
	small := []float32{0.5, -1, 2, 0.25, -0.125, 3, 1}
	for i := range base {
		base[i] = float32(i%13) / 7
		ft[i] = base[i] + float32(math.Sin(float64(i)*0.37))
	}
	opt := Options{Subspaces: 4, Seed: 9}
	inputs := []TaskInput{
		{Name: "w", Shape: []int{rows, cols}, Base: tensor.FromF32(base), FT: tensor.FromF32(ft)},
		{Name: "b", Shape: []int{len(small)}, Base: tensor.FromF32(make([]float32, len(small))), FT: tensor.FromF32(small)},
	}
	w := Weights{Shared: []float64{1.5, 1, 0.5, 0.25}}
	// The reference: the task vectors by hand, Decompose, Build.
	tau := make([]float32, len(ft))
	for i := range ft {
		tau[i] = ft[i] - base[i]
	}
	d, err := Decompose([]Input{{Name: "w", Shape: []int{rows, cols}, Tau: tau},
		{Name: "b", Shape: []int{len(small)}, Tau: append([]float32(nil), small...)}}, opt)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]float32{make([]float32, len(ft)), make([]float32, len(small))}
	wantKept, err := d.Build(w, 0.3, true, want)
	if err != nil {
		t.Fatal(err)
	}
	for _, dt := range []tensor.DType{tensor.F32, tensor.F16, tensor.BF16} {
		task, err := NewTask(inputs, opt)
		if err != nil {
			t.Fatal(err)
		}
		outs := []tensor.Vec{tensor.Alloc(len(ft), dt), tensor.Alloc(len(small), dt)}
		kept, err := task.BuildInto(w, 0.3, true, outs)
		if err != nil || kept != wantKept {
			t.Fatalf("%v: kept %d, %v; want %d", dt, kept, err, wantKept)
		}
		for k, o := range outs {
			ref := tensor.Alloc(len(want[k]), dt)
			ref.Store(want[k], 0)
			got, exp := make([]float32, o.Len()), make([]float32, o.Len())
			o.Load(got, 0)
			ref.Load(exp, 0)
			for i := range got {
				if math.Float32bits(got[i]) != math.Float32bits(exp[i]) {
					t.Fatalf("%v: tensor %d [%d] = %v, want %v", dt, k, i, got[i], exp[i])
				}
			}
		}
		if dt == tensor.F32 && &outs[0].F32[0] == &task.Out[0][0] {
			t.Errorf("float32 output built through the scratch, not in place")
		}
	}
	task, _ := NewTask(inputs, opt)
	_, err = task.BuildInto(w, 0.3, true, []tensor.Vec{tensor.Alloc(3, tensor.F32), tensor.Alloc(len(small), tensor.F32)})
	if !errors.Is(err, ErrInput) || err.Error() != `invalid NPS input: output "w" has 3 elements, want 480` {
		t.Errorf("short output: %v", err)
	}
	if _, err = task.BuildInto(w, 0.3, true, nil); !errors.Is(err, ErrInput) {
		t.Errorf("no outputs: %v", err)
	}
}
