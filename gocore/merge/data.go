package merge

import (
	"math"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// This file holds what the data-aware methods (fisher.go, regmean.go)
// share: the checks of Params.Statistics, the weighted mean they fall back
// to where a tensor has no statistics, and their per-merge state.

// fallibleCombiner is a Combiner whose combination can fail on the data
// (statistics with a NaN, a singular system): the engine calls
// combineChecked instead of combine and returns its error, so that bad
// statistics are found in the merge pass itself, at no extra read.
type fallibleCombiner interface {
	combineChecked(e *engine, ch chunkRef, base []float32, models, taus [][]float32, out []float32) error
}

// dataState is the per-merge state of the data-aware methods.
type dataState struct {
	// solved[ti] is regmean's solution for tensor ti (nil for tensors
	// without a Gram matrix), built by the first chunk that needs it and
	// dropped once every chunk has copied its part.
	solved []regmeanSolution
	// solving admits one regmean solve at a time (each is parallel inside),
	// which bounds the memory to one layer's float64 systems.
	solving sync.Mutex
	// scratch holds fisher's per-chunk denominators (*[]float32).
	scratch sync.Pool
}

// regmeanSolution is one tensor's merged values, in storage order, and how
// many of its chunks still have to copy them.
type regmeanSolution struct {
	mu   sync.Mutex
	out  []float32
	left int
	err  error
}

// checkDataWeights rejects negative weights: the data-aware methods divide
// by Σ_t w_t·S_t for non-negative statistics S_t, which must stay positive.
// (A zero sum is rejected by the engine: both methods normalise.)
func checkDataWeights(e *engine, method string) error {
	for m, w := range e.w {
		if !(w >= 0) {
			return inputErr("%s: weight %d is %v; weights must be non-negative", method, m, w)
		}
	}
	return nil
}

// checkStatistics validates the shape of Params.Statistics before any data
// is read: every entry names a tensor of the merge and holds one float32
// vector per model, whose length n fits tensor ti (fits returns the
// problem otherwise). No statistics at all is valid here (every tensor is
// then merged as the weighted mean); the doors (npsfuse.merge, the YAML
// config) require them for every model.
func checkStatistics(e *engine, method string, fits func(ti, m, n int) error) error {
	index := make(map[string]int, len(e.tensors))
	for ti, t := range e.tensors {
		index[t.Name] = ti
	}
	for name, st := range e.p.Statistics {
		ti, ok := index[name]
		if !ok {
			return inputErr("%s: statistics given for tensor %q, which is not merged", method, name)
		}
		if len(st) != e.T {
			return inputErr("%s: tensor %q has statistics for %d models, expected %d", method, name, len(st), e.T)
		}
		for m, v := range st {
			if v.DType != tensor.F32 {
				return inputErr("%s: statistics of tensor %q for model %d are %v; they must be float32", method, name, m, v.DType)
			}
			if err := fits(ti, m, v.Len()); err != nil {
				return err
			}
		}
	}
	return nil
}

// reportPlainAverage records, under "plain_average", the tensors of the
// given units that have no statistics (merged as the weighted mean).
func reportPlainAverage(e *engine, units []int) {
	for _, ti := range e.unitTensors(units) {
		name := e.tensors[ti].Name
		if _, ok := e.p.Statistics[name]; !ok {
			e.reportTensor("plain_average", name, true)
		}
	}
}

// weightedMean is the data-aware methods' fallback for a tensor without
// statistics: θ₀ + λ·Σ_t w_t τ_t / Σ_t w_t, with the rounding of
// task_arithmetic with normalize (weightedSum), so it equals that method
// bit for bit.
func weightedMean(e *engine, base []float32, taus [][]float32, out []float32) {
	lam := float32(e.p.Lambda) / e.wsum
	vec.WeightedSum(out, taus, e.w, 1)
	for j, b := range base[:len(out)] {
		out[j] = b + lam*out[j]
	}
}

// badStatistic returns the index and value of the first entry of x that
// is NaN, ±Inf, or negative, or −1.
func badStatistic(x []float32) (int, float32) {
	for j, v := range x {
		if !(v >= 0) || math.IsInf(float64(v), 1) {
			return j, v
		}
	}
	return -1, 0
}
