package merge

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Scope says over which entries a top-k selection ranks.
type Scope int

const (
	// ScopeTensor ranks each tensor on its own (the default).
	ScopeTensor Scope = iota
	// ScopeGlobal ranks all tensors of a model together, in the order given.
	ScopeGlobal
)

// ParseScope maps "tensor" and "global" to a Scope.
func ParseScope(s string) (Scope, error) {
	switch s {
	case "", "tensor":
		return ScopeTensor, nil
	case "global":
		return ScopeGlobal, nil
	}
	return 0, fmt.Errorf("unknown scope %q (want \"tensor\" or \"global\")", s)
}

// String returns "tensor" or "global".
func (s Scope) String() string {
	if s == ScopeGlobal {
		return "global"
	}
	return "tensor"
}

// Params are the knobs of a merge. The first group is shared by all
// methods; the rest belong to one method each and are ignored by the
// others. Every zero value is a valid setting (it is not replaced by a
// default); DefaultParams returns the recommended values.
type Params struct {
	// Weights w_t, one per model; nil means all 1. PCB uses them as its
	// per-task λ_t; model_stock and slerp ignore them.
	Weights []float32
	// Density is the fraction of entries kept by sparsification, in (0, 1]
	// (PCB: the fraction of β_t kept above the cut, the authors' ratio).
	Density float64
	// Densities, when set, gives each model its own density (mergekit's
	// per-model `density`), overriding Density.
	Densities []float64
	// Lambda λ scales the merged task vector (model_stock and slerp ignore
	// it; for neuro it multiplies λ₁ and λ₂).
	Lambda float64
	// Normalize divides by the sum of weights (of the agreeing models, for
	// TIES' disjoint mean). PCB, model_stock, slerp and neuro ignore it.
	Normalize bool
	// Scope of the top-k ranking (and of PCB's quantiles).
	Scope Scope
	// Seed of every random choice (DARE, DELLA).
	Seed uint64

	// Gamma is breadcrumbs' fraction of largest |τ| dropped before the next
	// Density fraction is kept (mergekit's gamma; default 0.01), in [0, 1).
	Gamma float64
	// Epsilon is DELLA's half-width ε of the keep probabilities, which run
	// from Density−ε to Density+ε (mergekit's epsilon; default 0.15).
	Epsilon float64
	// Gammas and Epsilons, when set, give each model its own γ and ε
	// (mergekit reads both per model), overriding Gamma and Epsilon.
	Gammas, Epsilons []float64
	// Rescale makes the sparsifying methods scale each sparsified task
	// vector, per tensor and model, by one factor Σ|τ| / Σ|τ̂| that restores
	// its L1 norm (mergekit's rescale; its default is true for DARE and
	// DELLA, false for the others). Without it DARE and DELLA keep the
	// surviving entries as they are.
	Rescale bool
	// T is slerp's interpolation parameter in [0, 1] (mergekit's t): 0
	// returns the first model, 1 the second.
	T float64
	// K is the consensus methods' minimum number of TALL masks a coordinate
	// must be active in (default 2).
	K int
	// TallLambda is the consensus methods' λ_t of the TALL masks (default
	// 0.4); TallLambdas, when set, gives one per model.
	TallLambda  float64
	TallLambdas []float64
	// MaskRate is NeuroMerging's fraction of each task vector trimmed away,
	// in [0, 1) (default 0.5: the top half by magnitude is kept; see the
	// neuro method for why not the authors' 0.8–0.95).
	MaskRate float64
	// Lam1 is NeuroMerging's λ₁, the scale of the parallel part (default 0).
	Lam1 float64
	// Lam2 is NeuroMerging's λ₂, the scale of the orthogonal part and of the
	// 1-D tensors; 0 (the default) selects the automatic 1 / (1 − max_t σ_t),
	// which restores the L1 mass the trim removed (see the neuro method).
	Lam2 float64

	// Statistics are the data-aware methods' statistics, by tensor name,
	// one float32 vector per model: fisher's diagonal Fisher (the tensor's
	// length) or regmean's Gram matrix XᵀX/N of the layer's inputs (in×in,
	// row-major). A tensor without an entry is merged as the weighted mean
	// of the task vectors. Only fisher and regmean read them.
	Statistics map[string][]tensor.Vec
	// FisherFloor is fisher's lower bound on every Fisher value, > 0
	// (Matena & Raffel's fisher_floor; default 1e-6): entries no example
	// touched fall back to the weighted mean.
	FisherFloor float64
	// Alpha is regmean's non-diagonal multiplier α ∈ [0, 1] (Jin et al.'s
	// reduce_non_diagonal_ratio; default 0.9): G̃ = α·G + (1−α)·diag(G).
	Alpha float64
	// CommonSpaceFraction is Iso-CTS's share of the rank given to the
	// common subspace, in [0, 1] (the authors' common_space_fraction;
	// default 0.8); the rest is split evenly between the tasks.
	CommonSpaceFraction float64
	// RawWeights makes multislerp use the weights as given instead of
	// dividing them by their sum (mergekit's normalize_weights: false; the
	// zero value normalizes, mergekit's default).
	RawWeights bool
	// Eps is multislerp's ε, added to every norm it divides by (mergekit's
	// eps; default 1e-8).
	Eps float64
	// MaxIter and Tol are karcher's iteration limit (default 10) and
	// tolerance on norms, angles and the tangent step (default 1e-5).
	MaxIter int
	Tol     float64
	// SelectTopK is SCE's fraction of the entries of nonzero variance
	// across the task vectors kept, in [0, 1] (mergekit's select_topk;
	// default 1: all).
	SelectTopK float64
	// NuslerpRows is nuslerp_flatten: false (per-row interpolation), which
	// nuslerp refuses; the zero value flattens, mergekit's default.
	NuslerpRows bool
	// Scale is passthrough's factor (mergekit's scale; default 1, the
	// tensor as it is); Scales, when set, gives one per model.
	Scale  float64
	Scales []float64

	// Tensorwise holds the parameters whose values vary by tensor
	// (mergekit's gradients and filter lists; see Setting), set by
	// Resolve. Every merge evaluates them per tensor (ForTensor); nil: none.
	Tensorwise *TensorSettings

	// Pool is the merge's thread count (zero value: the process default,
	// parallel.SetThreads). It travels with the call, so merges with
	// different counts may run at once; results do not depend on it.
	Pool parallel.Pool
}

// DefaultParams returns a method's recommended settings for Go callers:
// its row's defaults in the spec table (mergekit's where mergekit has the
// method, its `normalize` default included) with npsfuse's density 0.2,
// the default of npsfuse.merge. An unknown method gets the common
// defaults.
func DefaultParams(method string) Params {
	s, ok := methodSpecs[method]
	if !ok {
		s = &MethodSpec{Scope: "tensor"}
	}
	p := s.Defaults()
	p.Density = paramSpecs["density"].PythonDefault.(float64)
	return p
}

// density is model m's density.
func (p *Params) density(m int) float64 {
	if p.Densities != nil {
		return p.Densities[m]
	}
	return p.Density
}

// gamma is model m's breadcrumbs γ.
func (p *Params) gamma(m int) float64 {
	if p.Gammas != nil {
		return p.Gammas[m]
	}
	return p.Gamma
}

// epsilon is model m's DELLA ε.
func (p *Params) epsilon(m int) float64 {
	if p.Epsilons != nil {
		return p.Epsilons[m]
	}
	return p.Epsilon
}

// tallLambda is model m's TALL-mask λ_m.
func (p *Params) tallLambda(m int) float64 {
	if p.TallLambdas != nil {
		return p.TallLambdas[m]
	}
	return p.TallLambda
}

// ErrInput marks errors caused by the caller's data or parameters.
var ErrInput = fault.New(fault.InvalidInput, "invalid merge input")

// inputErr formats an error wrapping ErrInput.
func inputErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInput}, a...)...)
}
