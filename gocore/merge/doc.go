// Package merge combines the weights of several fine-tuned models that share
// one pre-trained base, tensor by tensor.
//
// Every method is one pipeline (after mergekit's generalized task
// arithmetic): for each model t the task vector τ_t = θ_t − θ₀ is formed, a
// Sparsifier trims or drops entries of it (top-k by magnitude, the
// breadcrumbs band, DARE's or DELLA's random drop and rescale, or nothing),
// and a Combiner turns the T sparsified task vectors into the merged tensor
// (weighted sum, TIES sign election with a disjoint mean, consensus masks,
// PCB's balancing scores, Model Stock's and slerp's interpolations, or
// NeuroMerging's per-neuron merge). A method is a row of the registry naming
// one Sparsifier and one Combiner; each method's file cites its paper and
// equations, and ../shared/METHODS.md gives the formulas. The data-aware
// methods (fisher, regmean) also read per-model statistics computed from
// data (Params.Statistics: Fisher diagonals, Gram matrices; data.go).
//
// # Passes
//
// A merge prepares, then merges. Preparation runs per selection unit (a
// tensor, or the whole model for ScopeGlobal): the Sparsifier finds its cuts
// (selection.go: one sampled counting pass over every model at once, exact,
// with topk.Select as the fallback) and the Combiner its statistics
// (cosines, norms, quantiles). A Combiner may also need every unit prepared
// before anything is merged (NeuroMerging's automatic λ₂) and finish with
// statistics over the whole model. Then the chunks are merged: each is
// loaded, its task vectors formed and sparsified, combined and stored.
//
// # Layout
//
// Elementwise methods split every tensor into parallel.Chunk-element
// chunks. Row-wise methods (Method.Rows: della, della_linear, neuro) see a
// tensor in its neuron layout — Tensor.Shape's first dimension as rows, the
// rest flattened (conv kernels become rows of in·kh·kw), 2-D tensors flagged
// Transposed seen as their transpose — and split it into chunks of whole
// rows; the engine gathers and scatters the columns of transposed tensors.
//
// # Determinism and reports
//
// Work is spread over Params.Pool's goroutines; arithmetic is float32
// whatever the storage (statistics accumulate in float64), each element is
// computed the same way on any goroutine, reductions combine per-chunk
// partial results in chunk order, and random draws come from rng streams
// keyed by (seed, tensor name, model), so results are identical bit for bit
// for any thread count, and a Merger streaming tensors one at a time writes
// exactly what Run writes. RunReport and Merger.Report return what a method
// chose (NeuroMerging's λ₂ and σ_t, Model Stock's t, slerp's Ω).
package merge
