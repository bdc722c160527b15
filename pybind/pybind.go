// Package pybind is the one package gopy binds into npsfuse's Python
// extension. It only converts: addresses of Arrow C Data Interface structs
// become tensor views (arrowio/bridge), JSON parameters become Go structs,
// and the call goes to a gocore kernel. Every exported function recovers
// panics and returns them as errors, because a Go panic would abort the
// Python interpreter.
//
// Addresses are passed as int (64-bit here): gopy copies slices element by
// element, so tensors never cross as slices.
package pybind

import (
	"encoding/json"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/bridge"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// version is the Go core's version; the Python package checks it matches.
const version = "0.1.0"

// guard turns a panic into an error carrying the panic value and stack.
func guard(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("internal error (Go panic): %v\n%s", r, debug.Stack())
	}
}

// Version returns the version of the Go core.
func Version() string { return version }

// Methods returns the merge methods' names, comma-separated and sorted.
func Methods() string { return strings.Join(merge.Methods(), ",") }

// SetThreads sets how many goroutines kernels use (n ≤ 0: all cores).
func SetThreads(n int) { parallel.SetThreads(n) }

// Threads returns how many goroutines kernels use.
func Threads() int { return parallel.Threads() }

// Inspect imports n tensors (contiguous ArrowArray structs at arrays,
// ArrowSchema structs at schemas), validates them, releases them and
// returns their total size in bytes. It is the bridge's round trip with no
// kernel behind it.
func Inspect(arrays, schemas, n int) (total int, err error) {
	defer guard(&err)
	b, err := bridge.ImportAt(uintptr(arrays), uintptr(schemas), n)
	if err != nil {
		return 0, err
	}
	defer b.Release()
	for _, t := range b.Tensors {
		total += t.Vec.Len() * t.Vec.DType.Size()
	}
	return total, nil
}

// mergeParams is the JSON form of merge.Params that Python sends. The
// method-specific fields are optional: a missing (or null) one takes
// merge.DefaultParams' value for the method; lam2 0 is NeuroMerging's
// automatic λ₂ (Python's lam2=None).
type mergeParams struct {
	Weights     []float32 `json:"weights"`
	Density     float64   `json:"density"`
	Densities   []float64 `json:"densities"`
	Lambda      float64   `json:"lambda"`
	Normalize   bool      `json:"normalize"`
	Scope       string    `json:"scope"`
	Seed        uint64    `json:"seed"`
	Gamma       *float64  `json:"gamma"`
	Epsilon     *float64  `json:"epsilon"`
	T           *float64  `json:"t"`
	K           *int      `json:"k"`
	TallLambda  *float64  `json:"tall_lambda"`
	TallLambdas []float64 `json:"tall_lambdas"`
	MaskRate    *float64  `json:"mask_rate"`
	Lam1        *float64  `json:"lam1"`
	Lam2        *float64  `json:"lam2"`
	FisherFloor *float64  `json:"fisher_floor"`
	Alpha       *float64  `json:"alpha"`
	// CommonSpaceFraction is Iso-CTS's common_space_fraction.
	CommonSpaceFraction *float64 `json:"common_space_fraction"`
	// Statistics[i] says that tensor i's group carries nModels statistics
	// arrays (fisher, regmean) between the models and the output.
	Statistics []bool `json:"statistics"`
}

// Merge runs a merge method over nTensors tensors of nModels models. The
// pairs at arrays/schemas are tensor-major: for each tensor, the base, the
// nModels fine-tuned versions, the nModels statistics when params'
// "statistics" flags the tensor (fisher, regmean), then the output buffer
// (written in place); the base's field metadata carries the shape and the
// transposed flag. params is a JSON object (see mergeParams). It returns
// the method's report (merge.RunReport) as a JSON object. Errors caused by
// the input start with "invalid merge input" or "bad tensor".
func Merge(method, params string, nTensors, nModels, arrays, schemas int) (report string, err error) {
	defer guard(&err)
	per := nModels + 2
	// The parameters say how many structs there are (statistics add some):
	// decode them first. With bad parameters the structs of the plain
	// layout are still imported, to be released.
	var mp mergeParams
	dec := json.NewDecoder(strings.NewReader(params))
	dec.DisallowUnknownFields()
	perr := dec.Decode(&mp)
	if perr == nil && mp.Statistics != nil && len(mp.Statistics) != nTensors {
		perr = fmt.Errorf("%d statistics flags for %d tensors", len(mp.Statistics), nTensors)
	}
	count := nTensors * per
	if perr == nil {
		for _, s := range mp.Statistics {
			if s {
				count += nModels
			}
		}
	}
	b, err := bridge.ImportAt(uintptr(arrays), uintptr(schemas), count)
	if err != nil {
		return "", err
	}
	defer b.Release()
	if perr != nil {
		return "", fmt.Errorf("%w: parameters: %v", merge.ErrInput, perr)
	}
	scope, err := merge.ParseScope(mp.Scope)
	if err != nil {
		return "", fmt.Errorf("%w: %v", merge.ErrInput, err)
	}
	ts := make([]merge.Tensor, nTensors)
	var stats map[string][]tensor.Vec
	for i, off := 0, 0; i < nTensors; i++ {
		n := per
		if mp.Statistics != nil && mp.Statistics[i] {
			n += nModels
		}
		group := b.Tensors[off : off+n]
		off += n
		models := make([]tensor.Vec, nModels)
		for m := range models {
			models[m] = group[1+m].Vec
		}
		if n > per {
			if stats == nil {
				stats = map[string][]tensor.Vec{}
			}
			for _, s := range group[1+nModels : 1+2*nModels] {
				stats[group[0].Name] = append(stats[group[0].Name], s.Vec)
			}
		}
		ts[i] = merge.Tensor{Name: group[0].Name, Shape: group[0].Shape, Transposed: group[0].Transposed,
			Base: group[0].Vec, Models: models, Out: group[n-1].Vec}
		bridge.AdviseHugePages(group[n-1].Vec) // fresh output: fewer page faults
	}
	p := merge.DefaultParams(method)
	p.Statistics = stats
	p.Weights, p.Density, p.Densities, p.Lambda = mp.Weights, mp.Density, mp.Densities, mp.Lambda
	p.Normalize, p.Scope, p.Seed = mp.Normalize, scope, mp.Seed
	set := func(dst *float64, src *float64) {
		if src != nil {
			*dst = *src
		}
	}
	set(&p.Gamma, mp.Gamma)
	set(&p.Epsilon, mp.Epsilon)
	set(&p.T, mp.T)
	set(&p.TallLambda, mp.TallLambda)
	set(&p.MaskRate, mp.MaskRate)
	set(&p.Lam1, mp.Lam1)
	set(&p.Lam2, mp.Lam2)
	set(&p.FisherFloor, mp.FisherFloor)
	set(&p.Alpha, mp.Alpha)
	set(&p.CommonSpaceFraction, mp.CommonSpaceFraction)
	if mp.K != nil {
		p.K = *mp.K
	}
	p.TallLambdas = mp.TallLambdas
	rep, err := merge.RunReport(method, p, ts)
	if err != nil {
		return "", err
	}
	out, err := json.Marshal(rep)
	if err != nil {
		return "", fmt.Errorf("merge report: %w", err)
	}
	return string(out), nil
}
