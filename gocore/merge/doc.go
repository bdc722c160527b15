// Package merge combines the weights of several fine-tuned models that share
// one pre-trained base, tensor by tensor.
//
// Every method is one pipeline (after mergekit's generalized task
// arithmetic): for each model t the task vector τ_t = θ_t − θ₀ is formed, a
// Sparsifier trims or drops entries of it (top-k by magnitude, DARE's random
// drop and rescale, or nothing), and a Combiner turns the T sparsified task
// vectors into the merged tensor (weighted sum, TIES sign election with a
// disjoint mean, or a plain weighted average of the models). A method is a
// row of the registry naming one Sparsifier and one Combiner; see
// ../shared/METHODS.md for the formulas.
//
// Work is split into parallel.Chunk-sized chunks of every tensor and spread
// over parallel.Threads() goroutines; arithmetic is float32 whatever the
// storage, each element is computed the same way on any goroutine, and
// random draws come from rng streams keyed by (seed, tensor name, model), so
// results are identical bit for bit for any thread count.
package merge
