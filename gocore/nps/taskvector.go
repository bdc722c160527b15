package nps

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// TaskVector returns one tensor's task vector τ = θ_ft − θ₀ in float32
// (inputs of any kernel dtype are widened first, so the difference is the
// float32 subtraction of the widened values) and a float32 buffer of the
// same length, which holds θ₀ widened and which a door reuses as Build's
// output. Every door (pybind.NPSDecompose, the daemon's NPS jobs) forms
// Decompose's inputs with it. name names the tensor in the error for a
// length mismatch (wrapping ErrInput).
func TaskVector(name string, base, ft tensor.Vec) (tau, scratch []float32, err error) {
	n := base.Len()
	if ft.Len() != n {
		return nil, nil, fmt.Errorf("%w: tensor %q: %d elements in the fine-tuned model, %d in the base", ErrInput, name, ft.Len(), n)
	}
	tau, scratch = make([]float32, n), make([]float32, n)
	ft.Load(tau, 0)
	base.Load(scratch, 0)
	for i := range tau {
		tau[i] -= scratch[i]
	}
	return tau, scratch, nil
}
