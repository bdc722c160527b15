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
