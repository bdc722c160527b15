package merge

import (
	"fmt"
	"sync/atomic"

	"github.com/npsfuse/npsfuse/gocore/linalg"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// This file is the plumbing shared by the merges that decompose whole
// weight matrices — TSV-M (tsv.go), Iso-C and Iso-CTS (isotropic.go).
//
// A 2-D tensor (Tensor.Shape of length 2, both dimensions nonzero) is a
// matrix: its weighted task vectors w_t·τ_t are read whole, in the neuron
// layout (out, in) of PyTorch's nn.Linear, as the authors' code sees them —
// tensors flagged Transposed are transposed first, so a GPT-2 Conv1D weight
// merges bit for bit like its nn.Linear twin (TSV and Iso-C do not depend
// on the layout, Iso-CTS does: it removes the common subspace on the output
// side) — and the method turns them into one update Δ of the same shape,
// which the chunk loop adds: θ = θ₀ + λ·Δ. Embeddings are matrices too
// (the authors decompose every 2-D tensor but CLIP's text projection).
// Every other tensor (biases, norms, conv kernels, flat tensors) is merged
// as the authors do: Δ = (1/T)·Σ_t w_t·τ_t, the mean of the weighted task
// vectors, computed chunk by chunk.
//
// Weights: w_t scales τ_t before the decomposition, so each method is its
// authors' algorithm applied to the task vectors w_t·τ_t (all weights 1
// reproduces it exactly). Normalize, Density and Seed are not used, nor is
// the scope: each matrix is decomposed on its own.
//
// Preparation (per tensor, in tensor order, one tensor at a time) reads the
// tensor's inputs in the engine's chunks — every non-finite input is found
// there and reported as the chunk loop would report it — and stores Δ
// (float32, storage order) until the tensor's last chunk is merged; then Δ
// is dropped and the tensor marked unprepared, so a streaming Merger holds
// one tensor's Δ at a time (Run prepares every tensor before merging, so
// it holds all of them: one float32 copy of the model's matrices; so does
// a Merger with scope "global", which prepares everything at once). The
// decompositions are exact (linalg.GramSVD and linalg.Polar: Gram matrices
// in float64, eigendecompositions by linalg.SymEig) and bit-identical for
// any thread count.

// subspaceState is the per-merge state of the subspace methods.
type subspaceState struct {
	delta [][]float32    // per tensor: Δ in storage order, nil when not held
	left  []atomic.Int64 // per tensor: chunks to merge before Δ is dropped
}

// subspaceMerge is the Combiner of the subspace methods: name for
// messages, tasks when the method needs each w_t·τ_t (not only their sum
// Σ_t w_t·τ_t, summed in model order in float32), and delta, which turns
// them (layout order, m×n; tasks empty unless asked for) into Δ.
type subspaceMerge struct {
	name  string
	tasks bool
	delta func(p *Params, sum linalg.Matrix, tasks []linalg.Matrix) (linalg.Matrix, error)
}

func (subspaceMerge) normalizes(Params) bool { return false }

func (subspaceMerge) check(e *engine) error {
	e.sub.delta = make([][]float32, len(e.tensors))
	e.sub.left = make([]atomic.Int64, len(e.tensors))
	return nil
}

// isMatrix reports whether tensor t is merged by decomposition.
func isMatrix(t *Tensor) bool {
	return len(t.Shape) == 2 && t.Shape[0] > 0 && t.Shape[1] > 0
}

// prepare computes Δ of every matrix among the units' tensors that does not
// hold one, in tensor order, and checks the other tensors' inputs (so that
// the first error is the one of the lowest chunk, as in the chunk loop).
func (s subspaceMerge) prepare(e *engine, units []int) error {
	for _, ti := range e.unitTensors(units) {
		t := &e.tensors[ti]
		if !isMatrix(t) {
			if err := e.checkTensorFinite(ti); err != nil {
				return err
			}
			continue
		}
		if e.sub.delta[ti] != nil {
			continue
		}
		d, err := s.tensorDelta(e, ti)
		if err != nil {
			return err
		}
		e.sub.delta[ti] = d
		e.sub.left[ti].Store(int64(len(e.tensorChunks(ti))))
	}
	return nil
}

// checkTensorFinite reads tensor ti's inputs chunk by chunk and returns the error
// of the lowest chunk holding a NaN or ±Inf.
func (e *engine) checkTensorFinite(ti int) error {
	chunks := e.tensorChunks(ti)
	var fail chunkError
	e.p.Pool.For(len(chunks), func(_, c int) {
		ws := e.workspace()
		defer e.scratch.Put(ws)
		if _, _, _, err := e.loadAll(chunks[c], ws); err != nil {
			fail.set(chunks[c].gc, err)
		}
	})
	return fail.err
}

// tensorDelta reads matrix ti whole and returns the method's Δ in storage
// order.
func (s subspaceMerge) tensorDelta(e *engine, ti int) ([]float32, error) {
	t := &e.tensors[ti]
	rows, cols := t.Shape[0], t.Shape[1] // storage
	n := rows * cols
	sum := make([]float32, n)
	tasks := make([][]float32, 0, e.T)
	if s.tasks {
		for range e.T {
			tasks = append(tasks, make([]float32, n))
		}
	}
	chunks := e.tensorChunks(ti)
	var fail chunkError
	e.p.Pool.For(len(chunks), func(_, c int) {
		ch := chunks[c]
		ws := e.workspace()
		defer e.scratch.Put(ws)
		_, _, taus, err := e.loadAll(ch, ws)
		if err != nil {
			fail.set(ch.gc, err)
			return
		}
		vec.WeightedSum(sum[ch.lo:ch.hi], taus, e.w, 1)
		for m, dst := range tasks {
			vec.Scale(dst[ch.lo:ch.hi], taus[m], e.w[m])
		}
	})
	if fail.err != nil {
		return nil, fail.err
	}
	// Layout order (out, in): the transpose of storage for Conv1D weights.
	layout := func(x []float32) linalg.Matrix {
		a := linalg.Matrix{Rows: rows, Cols: cols, Data: x}
		if t.Transposed {
			a = a.Transpose()
		}
		return a
	}
	sumM := layout(sum)
	taskM := make([]linalg.Matrix, len(tasks))
	for m, x := range tasks {
		taskM[m] = layout(x)
	}
	d, err := s.delta(&e.p, sumM, taskM)
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", s.name, t.Name, err)
	}
	if t.Transposed {
		d = d.Transpose()
	}
	return d.Data, nil
}

// combine adds λ·Δ to the base: Δ held for matrices, the mean of the
// weighted task vectors for the other tensors. A matrix's Δ is dropped
// after its last chunk (and the tensor marked unprepared, so that a
// Merger asked for it again recomputes it).
func (subspaceMerge) combine(e *engine, ch chunkRef, base []float32, _, taus [][]float32, out []float32) {
	lam := float32(e.p.Lambda)
	ti := ch.ti
	if isMatrix(&e.tensors[ti]) {
		d := e.sub.delta[ti][ch.lo:ch.hi]
		for j, b := range base[:len(out)] {
			out[j] = b + float32(lam*d[j])
		}
		// With a per-tensor scope, unit ti is tensor ti.
		if e.p.Scope == ScopeTensor && e.sub.left[ti].Add(-1) == 0 {
			e.sub.delta[ti] = nil
			e.prepared[ti] = false
		}
		return
	}
	vec.WeightedSum(out, taus, e.w, 1)
	nT := float32(e.T)
	for j, b := range base[:len(out)] {
		out[j] = b + float32(lam*(out[j]/nT))
	}
}

// meanSingular is Σσ/len(σ) (0 for no values).
func meanSingular(sv []float64) float64 {
	if len(sv) == 0 {
		return 0
	}
	s := 0.0
	for _, v := range sv {
		s += v
	}
	return s / float64(len(sv))
}

// forTasks runs fn(t) for every task in parallel and returns the error of
// the lowest-numbered failing task.
func forTasks(pool parallel.Pool, T int, fn func(t int) error) error {
	errs := make([]error, T)
	pool.For(T, func(_, t int) { errs[t] = fn(t) })
	for t, err := range errs {
		if err != nil {
			return fmt.Errorf("model %d: %w", t, err)
		}
	}
	return nil
}

// scaled returns s·x as a new matrix.
func scaled(x linalg.Matrix, s float64) linalg.Matrix {
	out := linalg.Matrix{Rows: x.Rows, Cols: x.Cols, Data: make([]float32, len(x.Data))}
	vec.Scale(out.Data, x.Data, float32(s))
	return out
}
