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
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/npsfuse/npsfuse/arrowio/bridge"
	"github.com/npsfuse/npsfuse/gocore/fault"
	"github.com/npsfuse/npsfuse/gocore/merge"
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// version is the Go core's version; the Python package checks it matches.
const version = "0.1.0"

// guard turns a panic into an error carrying the panic value and stack
// (an Internal fault), and tags every error with its kind for Python
// (exportErr). Every exported function that returns an error defers it.
func guard(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("internal error (Go panic): %v\n%s", r, debug.Stack())
	}
	*err = exportErr(*err)
}

// decodeStrict decodes the JSON a door call carries (fault.DecodeJSON,
// the daemon's rule); numbers bound for an any become json.Number, which
// merge.Resolve reads exactly. Errors wrap kind and name what was decoded.
func decodeStrict(kind error, what, text string, v any) error {
	if err := fault.DecodeJSON([]byte(text), v, true); err != nil {
		return fmt.Errorf("%w: %s: %v", kind, what, err)
	}
	return nil
}

// Version returns the version of the Go core.
func Version() string { return version }

// Methods returns the merge methods' names, comma-separated and sorted.
func Methods() string { return strings.Join(merge.Methods(), ",") }

// SetThreads sets the process default of how many goroutines kernels use
// (n ≤ 0: all cores); a call that names its own thread count keeps it.
func SetThreads(n int) { parallel.SetThreads(n) }

// Threads returns the process default of how many goroutines kernels use.
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

// mergeParams is the JSON form of a merge's parameters that Python sends:
// the raw values by spec name (merge.Values: "global" once, "models" one
// mapping per model), resolved against the method's row of the spec table
// by merge.Resolve, as the YAML door does.
type mergeParams struct {
	Global map[string]any   `json:"global"`
	Models []map[string]any `json:"models"`
	// Statistics[i] says that tensor i's group carries nModels statistics
	// arrays (fisher, regmean) between the models and the output.
	Statistics []bool `json:"statistics"`
	// Threads is the merge's thread count (absent or ≤ 0: the process default,
	// SetThreads).
	Threads int `json:"threads"`
}

// decodeParams reads params and resolves them for method and nModels
// models; the error lists every problem, named as npsfuse.merge's
// keywords are.
func decodeParams(method, params string, nModels int) (merge.Params, mergeParams, error) {
	var mp mergeParams
	if err := decodeStrict(merge.ErrInput, "parameters", params, &mp); err != nil {
		return merge.Params{}, mp, err
	}
	// json.Numbers and Python's "nan"/"inf" strings are read by Resolve.
	p, bad := merge.Resolve(method, nModels, merge.Values{Global: mp.Global, Models: mp.Models})
	p.Pool = parallel.Pool{Threads: mp.Threads}
	if len(bad) > 0 {
		return p, mp, fmt.Errorf("%w: %s", merge.ErrInput, strings.Join(merge.Format(bad, merge.PythonWhere), "; "))
	}
	return p, mp, nil
}

// CheckParams resolves a merge's parameters (the JSON of Merge's params)
// for nModels models without merging: Python calls it before loading any
// model, so a bad value fails at once.
func CheckParams(method, params string, nModels int) (err error) {
	defer guard(&err)
	_, _, err = decodeParams(method, params, nModels)
	return err
}

// MethodSpecs returns the spec table as JSON: {"methods": [...],
// "params": [...], "common": [...]} (merge.MethodSpec and
// merge.ParamSpec). Python derives its keywords, defaults and docs from it.
func MethodSpecs() (out string, err error) {
	defer guard(&err)
	var doc struct {
		Methods []merge.MethodSpec `json:"methods"`
		Params  []merge.ParamSpec  `json:"params"`
		Common  []string           `json:"common"`
	}
	for _, m := range merge.Methods() {
		s, _ := merge.Spec(m)
		doc.Methods = append(doc.Methods, s)
	}
	for _, n := range merge.ParamNames() {
		p, _ := merge.Param(n)
		doc.Params = append(doc.Params, p)
	}
	doc.Common = merge.Common
	b, err := json.Marshal(doc)
	return string(b), err
}

// mergeWith runs a merge method over nTensors tensors of nModels models
// until ctx is done (Merge, MergeJob). The pairs at arrays/schemas are
// tensor-major: for each tensor, the base, the
// nModels fine-tuned versions, the nModels statistics when params'
// "statistics" flags the tensor (fisher, regmean), then the output buffer
// (written in place); the base's field metadata carries the shape and the
// transposed flag. params is a JSON object (see mergeParams). It returns
// the method's report (merge.RunReport) as a JSON object. Errors caused by
// the input start with "invalid merge input" or "bad tensor".
func mergeWith(ctx context.Context, method, params string, nTensors, nModels, arrays, schemas int) (report string, err error) {
	defer guard(&err)
	per := nModels + 2
	// The parameters say how many structs there are (statistics add some):
	// decode them first. With bad parameters the structs of the plain
	// layout are still imported, to be released.
	p, mp, perr := decodeParams(method, params, nModels)
	if perr == nil && mp.Statistics != nil && len(mp.Statistics) != nTensors {
		perr = fmt.Errorf("%w: parameters: %d statistics flags for %d tensors", merge.ErrInput, len(mp.Statistics), nTensors)
	}
	count := nTensors * per
	if len(mp.Statistics) == nTensors { // decoded, even if the values are bad
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
		return "", perr
	}
	ts := make([]merge.Tensor, nTensors)
	var stats map[string][]tensor.Vec
	for i, off := 0, 0; i < nTensors; i++ {
		n := per
		if len(mp.Statistics) == nTensors && mp.Statistics[i] {
			n += nModels
		}
		group := b.Tensors[off : off+n]
		off += n
		if n > per {
			if stats == nil {
				stats = map[string][]tensor.Vec{}
			}
			stats[group[0].Name] = append(stats[group[0].Name], vecs(group[1+nModels:1+2*nModels])...)
		}
		ts[i] = merge.Tensor{Name: group[0].Name, Shape: group[0].Shape, Transposed: group[0].Transposed,
			Base: group[0].Vec, Models: vecs(group[1 : 1+nModels]), Out: group[n-1].Vec}
		bridge.AdviseHugePages(group[n-1].Vec) // fresh output: fewer page faults
	}
	p.Statistics = stats
	rep, err := merge.RunReportContext(ctx, method, p, ts)
	if err != nil {
		return "", err
	}
	out, err := json.Marshal(rep)
	if err != nil {
		return "", fmt.Errorf("merge report: %w", err)
	}
	return string(out), nil
}

// vecs are the views of imported tensors.
func vecs(ts []bridge.Tensor) []tensor.Vec {
	out := make([]tensor.Vec, len(ts))
	for i, t := range ts {
		out[i] = t.Vec
	}
	return out
}

// TransposedByModelType returns merge.TransposedByModelType as JSON.
func TransposedByModelType() (out string, err error) {
	defer guard(&err)
	b, err := json.Marshal(merge.TransposedByModelType)
	return string(b), err
}
