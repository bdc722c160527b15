package nps

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/parallel"
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

// TaskInput is one tensor of a fine-tune: its name, shape, and values in
// the base and in the fine-tuned model (any kernel dtype).
type TaskInput struct {
	Name     string
	Shape    []int
	Base, FT tensor.Vec
}

// Task is one fine-tune's task vector τ = θ_ft − θ₀ split into subspaces,
// with the float32 buffers Build writes τ_NPS into: what every door
// (pybind.NPSDecompose / NPSBuild, the daemon's nps_prune, compress and
// nps_search jobs) holds between builds.
type Task struct {
	*Decomposition
	// Out[i] is tensor i's τ_NPS of the last Build (before it, θ₀ widened:
	// TaskVector's scratch, reused).
	Out [][]float32
}

// NewTask forms every tensor's task vector (TaskVector) and decomposes
// them (Decompose); errors name the tensor.
func NewTask(inputs []TaskInput, opt Options) (*Task, error) {
	in := make([]Input, len(inputs))
	out := make([][]float32, len(inputs))
	for i, t := range inputs {
		tau, scratch, err := TaskVector(t.Name, t.Base, t.FT)
		if err != nil {
			return nil, err
		}
		in[i], out[i] = Input{Name: t.Name, Shape: t.Shape, Tau: tau}, scratch
	}
	d, err := Decompose(in, opt)
	if err != nil {
		return nil, err
	}
	return &Task{Decomposition: d, Out: out}, nil
}

// Build builds τ_NPS for weights w into t.Out (Decomposition.Build) and
// returns how many entries were kept.
func (t *Task) Build(w Weights, keep float64, global bool) (int64, error) {
	return t.Decomposition.Build(w, keep, global, t.Out)
}

// BuildInto builds τ_NPS for weights w into outs, one tensor per
// decomposed tensor in order, of any kernel dtype: float32 outputs are
// written in place, the others from t.Out, rounded to their dtype (in
// parallel on the decomposition's pool). It returns how many entries were
// kept; errors wrap ErrInput and name the tensor.
func (t *Task) BuildInto(w Weights, keep float64, global bool, outs []tensor.Vec) (int64, error) {
	if len(outs) != t.Len() {
		return 0, fmt.Errorf("%w: %d output tensors for %d decomposed tensors", ErrInput, len(outs), t.Len())
	}
	dst := make([][]float32, len(outs))
	for i, o := range outs {
		if o.Len() != len(t.Out[i]) {
			name, _, _ := t.TensorInfo(i)
			return 0, fmt.Errorf("%w: output %q has %d elements, want %d", ErrInput, name, o.Len(), len(t.Out[i]))
		}
		dst[i] = t.Out[i]
		if o.DType == tensor.F32 {
			dst[i] = o.F32
		}
	}
	kept, err := t.Decomposition.Build(w, keep, global, dst)
	if err != nil {
		return 0, err
	}
	for i, o := range outs {
		if o.DType == tensor.F32 {
			continue
		}
		src := t.Out[i]
		t.pool.For(parallel.NumChunks(len(src)), func(_, c int) {
			lo, hi := c*parallel.Chunk, min((c+1)*parallel.Chunk, len(src))
			o.Store(src[lo:hi], lo)
		})
	}
	return kept, nil
}
