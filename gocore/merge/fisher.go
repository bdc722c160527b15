package merge

import "github.com/npsfuse/npsfuse/gocore/vec"

// Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted
// Averaging", NeurIPS 2022, eq. 3): each parameter is the average of the
// models' values weighted by their diagonal Fisher information,
//
//	θ*_j = Σ_t w_t F̃_t,j θ_t,j / Σ_t w_t F̃_t,j,   F̃_t,j = max(F_t,j, FisherFloor),
//
// computed here in task-vector form, θ*_j = θ₀,j + λ·Σ_t w_t F̃_t,j τ_t,j /
// Σ_t w_t F̃_t,j, which is the same value for λ = 1 (Σ_t w_t F̃_t,j θ₀,j /
// Σ_t w_t F̃_t,j = θ₀,j) and lets λ scale the merged task vector as in the
// other methods. The floor (the authors' fisher_floor, 1e-6) makes entries
// that no example touched fall back to the weighted mean Σ_t w_t θ_t / Σ_t
// w_t; the authors' code floors only the first ("target") model by default,
// npsfuse floors every model so that the merge is symmetric in the models.
// Their coefficient search also divides each model's weight by the L2 norm
// of its whole Fisher by default (normalize_fishers); npsfuse leaves that
// to the caller (scale the weights or the statistics).
//
// The Fisher values come per tensor and model in Params.Statistics (float32,
// the tensor's length, non-negative); they are read and checked in the merge
// pass itself (one read of each input). A tensor without statistics is
// merged as the weighted mean of the task vectors (exactly task_arithmetic
// with normalize) and listed in the report's "plain_average". Weights are
// the authors' merging coefficients λ_t (non-negative; scaling them all
// changes nothing); Normalize is not used. Arithmetic is float32 in model
// order, each product and sum rounded separately.
func init() {
	register(Method{Name: "fisher", Sparsify: keepAll{}, Combine: fisherMerge{}})
}

type fisherMerge struct{}

// normalizes: the result divides by Σ_t w_t F̃_t, so the engine rejects
// weights summing to 0.
func (fisherMerge) normalizes(Params) bool { return true }

func (fisherMerge) check(e *engine) error {
	if err := checkDataWeights(e, "fisher"); err != nil {
		return err
	}
	return checkStatistics(e, "fisher", func(ti, m, n int) error {
		t := &e.tensors[ti]
		if n != t.Base.Len() {
			return inputErr("fisher: the Fisher values of tensor %q for model %d have %d entries, the tensor %d", t.Name, m, n, t.Base.Len())
		}
		return nil
	})
}

func (fisherMerge) prepare(e *engine, units []int) error {
	reportPlainAverage(e, units)
	return nil
}

// combine is never called: the engine calls combineChecked.
func (f fisherMerge) combine(e *engine, ch chunkRef, base []float32, models, taus [][]float32, out []float32) {
	if err := f.combineChecked(e, ch, base, models, taus, out); err != nil {
		panic(err)
	}
}

func (fisherMerge) combineChecked(e *engine, ch chunkRef, base []float32, _, taus [][]float32, out []float32) error {
	name := e.tensors[ch.ti].Name
	st, ok := e.p.Statistics[name]
	if !ok {
		weightedMean(e, base, taus, out)
		return nil
	}
	n := len(out)
	den, _ := e.data.scratch.Get().(*[]float32)
	if den == nil || cap(*den) < n {
		d := make([]float32, n)
		den = &d
	}
	defer e.data.scratch.Put(den)
	num, dn := out, (*den)[:n]
	clear(num)
	clear(dn)
	floor := float32(e.p.FisherFloor)
	bad := false
	for m := range e.T {
		f, tau, wm := st[m].F32[ch.lo:ch.hi], taus[m][:n], e.w[m]
		f = f[:n]
		for j, fj := range f {
			if !(fj >= 0) {
				bad = true // NaN or negative: named below
			}
			wf := float32(wm * max(fj, floor))
			num[j] += float32(wf * tau[j])
			dn[j] += wf
		}
	}
	if bad || !vec.Finite(dn) {
		for m := range e.T {
			if j, v := badStatistic(st[m].F32[ch.lo:ch.hi]); j >= 0 {
				return inputErr("fisher: tensor %q: the Fisher values of model %d have %v at flat index %d (they must be finite and non-negative)", name, m, v, ch.lo+j)
			}
		}
		return inputErr("fisher: tensor %q: Σ_t w_t F_t overflows float32; scale the Fisher values down", name)
	}
	lam := float32(e.p.Lambda)
	for j, b := range base[:n] {
		out[j] = b + float32(lam*(num[j]/dn[j]))
	}
	return nil
}
