// Package search provides derivative-free optimisers with an ask/tell interface,
// in pure Go and float64, seeded and reproducible bit for bit.
//
// Two optimisers are provided:
//
//   - CMAES: Hansen's standard (μ/μ_w, λ)-CMA-ES with rank-one and rank-μ
//     covariance updates, cumulative step-size adaptation and box bounds by
//     repair (N. Hansen, "The CMA Evolution Strategy: A Tutorial",
//     arXiv:1604.00772, 2016).
//   - DE: differential evolution (Storn & Price 1997) with the strategies
//     rand/1/bin, best/1/bin and current-to-best/1/bin, binomial crossover,
//     one-to-one greedy selection and a pluggable F/CR Schedule, including the
//     periodic cosine schedule of CADE (Jiang, Du et al., 2024).
//
// New (factory.go) builds either from a JSON-friendly Config, and Save /
// Restore carry its whole state (a DE's schedule inside DEState): the one
// factory every door and session uses.
//
// # Direction of optimisation
//
// Both optimisers MAXIMISE by default: Tell takes one fitness per asked point
// and higher is better, because the callers maximise a validation metric. Set
// Minimize in the options to minimise instead. A non-finite fitness (NaN, +Inf
// or -Inf) marks a failed evaluation and always ranks worst, whatever the
// direction; Best never returns a failed evaluation.
//
// # Protocol
//
// Ask returns a batch of points to evaluate (fresh copies the caller may keep
// or modify); Tell takes their fitness in the same order. Calling Ask again
// before Tell returns the same batch again. Tell without a pending batch, or
// with the wrong number of values, is an error and changes nothing.
//
// # Reproducibility and persistence
//
// All randomness comes from the package's RNG (xoshiro256** seeded through
// SplitMix64), whose state is part of the serialisable CMAESState and DEState.
// State() may be taken at any point (also between Ask and Tell) and
// RestoreCMAES / RestoreDE give an optimiser that continues exactly, bit for
// bit, as the uninterrupted one would. The state structs are JSON-friendly:
// fitness values use JSONFloat so that failed (non-finite) evaluations survive
// a JSON round trip, and the RNG state is a hex string. Results are identical
// on a given GOARCH; the DE vector operators additionally forbid fused
// multiply-add so that they are identical across architectures.
//
// # Reusable operators
//
// The DE vector operators (DiffMutate, CurrentToBestMutate, BinomialMask,
// Crossover, PickDistinct, RepairClip, RepairReflect) are small generic
// functions over []float32 or []float64 slices, so that a weight-space evolver
// can apply them to large flattened buffers.
package search
