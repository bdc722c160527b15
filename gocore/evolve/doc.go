// Package evolve implements the weight-space evolution kernels behind
// npsfuse's Evolver: differential evolution whose individuals are whole sets of
// model weights, flattened into one buffer each.
//
// Two families of operators are supported, both followed by crossover
// against the parent x_i and one-to-one selection (done by the caller):
//
//   - StrategyEvolver, the operator of Evolver (Du, Li, Liu et al., 2024,
//     "Knowledge Fusion by Evolving Weights of Language Models"):
//     v = (1 − F)·x_i + F·x_ref, computed as x_i + F·(x_ref − x_i) with
//     search.DiffMutate (the same value in exact arithmetic; F = 0 gives x_i
//     exactly). x_ref is a random other individual with probability
//     p = 0.5/(G − g) + 0.5 and the best other individual otherwise.
//   - the classic DE strategies of package search (Storn & Price 1997):
//     rand/1/bin, best/1/bin and current-to-best/1/bin; with a Cosine
//     schedule and no forced index, rand/1/bin is CADE (Jiang, Du et al.,
//     2024).
//
// The donor arithmetic is search.DiffMutate and search.CurrentToBestMutate
// (the vector loops reproduce them bit for bit),
// index draws are search.PickDistinct on search.RNG, tensor/block masks are
// search.BinomialMask, and F/CR come from search.Schedule: this package plans
// trials and runs those operators over large buffers in parallel. The one
// piece written anew is the dense element mask: search.BinomialMask plus
// search.Crossover draw a Float64 and branch per element, which a random mask
// makes mispredict about half the time, so the dense path draws 16-bit
// uniforms (four per 64-bit draw) and selects branch-free (see Offspring;
// CR is then rounded to a multiple of 2⁻¹⁶).
//
// # Sessions
//
// Session (session.go) is the engine of a whole run on top of these
// kernels: an ask/tell state machine, serialisable as JSON, that plans
// every trial, keeps fitness, selects, decides when an accepted trial
// replaces its parent (at once for Evolver's operator and the merger mode,
// per generation for the DE strategies) and records the history. Both
// doors — npsfuse.Evolver through pybind and the daemon's evolve sessions
// — drive it and only build and score what it hands out, so a seed gives
// the same run through either.
//
// # Vector loops
//
// When the build sets GOEXPERIMENT=simd on amd64 and the CPU has AVX2, the
// dense element step (donor, mask, select and count in one pass, eight
// elements per step) and the donor loop of Tensor/Block segments run on
// 256-bit vectors through simd/archsimd (simd_amd64.go); otherwise, and for
// the last partial vector of a buffer, plain Go (generic.go and kernel.go)
// does the same work. Both round every operation alike — a multiply, then an
// add, never a fused multiply-add — and read the same words of the mask
// stream, so results are bit for bit the same with and without the vector
// loops (TestDenseVectorMatchesScalar, TestOffspringVectorMatchesScalar).
// The one latitude is IEEE 754's: when two NaNs with different payloads meet
// in one operation, which payload survives is not specified (the compiler
// may swap the operands of a commutative scalar operation); the result is a
// NaN either way.
//
// # Crossover granularity
//
// Element (per scalar, the methods' definition), Tensor (each tensor — a
// segment given by the caller — is taken whole from the donor with
// probability CR) or Block (fixed-size blocks of Config.BlockSize elements).
// For CR < SparseCR the element mask is drawn as geometric gaps between
// taken elements, so that the tiny rates of CADE (1e-5) cost a copy of x_i
// plus a few draws instead of one draw and a donor element per scalar.
//
// # Determinism
//
// Every random choice is a pure function of (seed, generation, individual,
// block), never of scheduling order, so results are identical bit for bit
// whatever the thread count. The streams, which the Python tests
// re-implement, are (Mix, Key and Bits from package rng, RNG = search.NewRNG):
//
//	TrialKey(s, g, i) = Mix(Key(s, "npsfuse/evolve/trial", g) + i)
//	trial stream      = RNG(TrialKey(s, g, i))        references, j_rand, segment mask
//	chunk b stream    = RNG(Bits(TrialKey(s, g, i), b)) element mask of chunk b
//	order stream      = RNG(Key(s, "npsfuse/evolve/order", g))
//	schedule stream   = RNG(Key(s, "npsfuse/evolve/schedule", g))
//
// where chunk b covers elements [b·parallel.Chunk, (b+1)·parallel.Chunk).
// Arithmetic forbids fused multiply-add (see search.DiffMutate), so results
// also agree across architectures and with a NumPy float32 reference.
package evolve
