package merge

import (
	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/topk"
)

// Method is one row of the registry: how task vectors are sparsified and how
// they are combined.
type Method struct {
	Name     string
	Sparsify Sparsifier
	Combine  Combiner
}

// Sparsifier trims a model's task vector in place, one chunk at a time.
type Sparsifier interface {
	// usesDensity reports whether Params.Density must lie in (0, 1].
	usesDensity() bool
	// prepare runs before the chunks of the given selection units are
	// merged (e.g. to find their thresholds).
	prepare(e *engine, units []int) error
	// apply sparsifies model m's task vector over chunk ch in place.
	apply(e *engine, m int, ch chunkRef, tau []float32)
}

// Combiner writes the merged values of one chunk into out.
type Combiner interface {
	// normalizes reports whether the combiner divides by a weight sum.
	normalizes(p Params) bool
	combine(e *engine, base []float32, models, taus [][]float32, out []float32)
}

var registry = map[string]Method{}

func register(name string, s Sparsifier, c Combiner) {
	registry[name] = Method{Name: name, Sparsify: s, Combine: c}
}

func init() {
	register("linear", keepAll{}, linear{})
	register("task_arithmetic", keepAll{}, weightedSum{})
	register("ties", topK{}, disjointMean{})
	register("magnitude_prune", topK{}, weightedSum{})
	register("dare_linear", dare{}, weightedSum{})
	register("dare_ties", dare{}, disjointMean{})
}

// sparsifyState is what a Sparsifier's prepare computes for the chunk loop.
type sparsifyState struct {
	// cuts[m][u] is the top-k cut of model m over selection unit u (a
	// tensor, or everything for ScopeGlobal).
	cuts [][]topk.Cut
}

// keepAll leaves task vectors as they are.
type keepAll struct{}

func (keepAll) usesDensity() bool                       { return false }
func (keepAll) prepare(*engine, []int) error            { return nil }
func (keepAll) apply(*engine, int, chunkRef, []float32) {}

// topK keeps exactly ⌊density·n⌋ entries of largest |τ| per selection unit
// (TIES' trim step, Yadav et al. 2023, §3 "Trim"), ties by lower index.
type topK struct{}

func (topK) usesDensity() bool { return true }

func (topK) prepare(e *engine, which []int) error {
	units := e.units()
	if e.sp.cuts == nil {
		e.sp.cuts = make([][]topk.Cut, e.T)
		for m := range e.T {
			e.sp.cuts[m] = make([]topk.Cut, len(units))
		}
	}
	type job struct{ m, u int }
	var big, small []job
	for m := range e.T {
		for _, u := range which {
			un := units[u]
			if un.n >= 1<<20 {
				big = append(big, job{m, u})
			} else {
				small = append(small, job{m, u})
			}
		}
	}
	sel := func(j job, workers int) {
		un := units[j.u]
		k := int64(e.p.density(j.m) * float64(un.n))
		src := e.magnitudes(j.m, un.chunks)
		e.sp.cuts[j.m][j.u] = topk.Select(k, un.n, len(un.chunks), src, workers)
	}
	for _, j := range big {
		sel(j, parallel.Threads())
	}
	parallel.For(len(small), func(_, i int) { sel(small[i], 1) })
	return nil
}

func (topK) apply(e *engine, m int, ch chunkRef, tau []float32) {
	c := ch.lc
	u := ch.ti
	if e.p.Scope == ScopeGlobal {
		c, u = ch.gc, 0
	}
	cut := &e.sp.cuts[m][u]
	switch {
	case cut.All:
		return
	case cut.None:
		clear(tau)
		return
	}
	b := cut.Bits
	allow := cut.Allow(c)
	for j, x := range tau {
		a := topk.AbsBits(x)
		switch {
		case a > b:
		case a == b && allow != 0:
			allow-- // -1 (all ties kept) never reaches 0
		default:
			tau[j] = 0
		}
	}
}

// unit is a selection unit: its chunks (global indices) and element count.
type unit struct {
	chunks []chunkRef
	n      int64
}

// units groups the chunks by selection scope.
func (e *engine) units() []unit {
	if e.p.Scope == ScopeGlobal {
		var n int64
		for _, t := range e.tensors {
			n += int64(t.Base.Len())
		}
		return []unit{{chunks: e.chunks, n: n}}
	}
	us := make([]unit, len(e.tensors))
	for ti, t := range e.tensors {
		end := len(e.chunks)
		if ti+1 < len(e.first) {
			end = e.first[ti+1]
		}
		us[ti] = unit{chunks: e.chunks[e.first[ti]:end], n: int64(t.Base.Len())}
	}
	return us
}

// magnitudes returns a topk.Source over |θ_m − θ₀| for the given chunks.
func (e *engine) magnitudes(m int, chunks []chunkRef) topk.Source {
	return func(c int, dst []uint32) []uint32 {
		ch := chunks[c]
		t := &e.tensors[ch.ti]
		n := ch.hi - ch.lo
		ws := e.workspace()
		defer e.scratch.Put(ws)
		base := t.Base.View(ch.lo, n, ws.base)
		mv := t.Models[m].View(ch.lo, n, ws.models[0])
		dst = dst[:n]
		for j, x := range mv {
			dst[j] = topk.AbsBits(x - base[j])
		}
		return dst
	}
}

// dare drops each entry with probability 1 − density and rescales the kept
// ones by 1/density (Yu et al. 2024, "Language Models are Super Mario", eq. 2).
// The draw for entry i of tensor name and model m is
// rng.Uniform(rng.Key(seed, name, m), i) < density.
type dare struct{}

func (dare) usesDensity() bool            { return true }
func (dare) prepare(*engine, []int) error { return nil }

func (dare) apply(e *engine, m int, ch chunkRef, tau []float32) {
	d := float32(e.p.density(m))
	if d >= 1 {
		return
	}
	key := rng.Key(e.p.Seed, e.tensors[ch.ti].Name, m)
	scale := 1 / d
	for j := range tau {
		if rng.Uniform(key, uint64(ch.lo+j)) < d {
			tau[j] *= scale
		} else {
			tau[j] = 0
		}
	}
}

// weightedSum is task arithmetic (Ilharco et al. 2023, eq. 1):
// θ₀ + λ·Σ w_t τ_t, divided by Σ w_t when Normalize is set.
type weightedSum struct{}

func (weightedSum) normalizes(p Params) bool { return p.Normalize }

func (weightedSum) combine(e *engine, base []float32, _, taus [][]float32, out []float32) {
	lam := float32(e.p.Lambda)
	if e.p.Normalize {
		lam /= e.wsum
	}
	weightedSumInto(out, e.w, taus)
	for j, b := range base[:len(out)] {
		out[j] = b + lam*out[j]
	}
}

// weightedSumInto sets out = Σ_m w[m]·x[m], accumulating in model order.
func weightedSumInto(out, w []float32, x [][]float32) {
	clear(out)
	for m, xm := range x {
		wm := w[m]
		xm = xm[:len(out)]
		for j, v := range xm {
			out[j] += wm * v
		}
	}
}

// disjointMean is TIES' elect and disjoint merge (Yadav et al. 2023, §3,
// eqs. for γ and τ_m): γ = sign(Σ w_t τ_t) with γ = +1 when the sum is 0
// (mergekit's rule); the result averages, with weights w_t, the entries whose
// weighted value w_t·τ_t is nonzero and has sign γ (divides by their weight
// sum only when Normalize is set); 0 where none agrees.
type disjointMean struct{}

func (disjointMean) normalizes(Params) bool { return false }

func (disjointMean) combine(e *engine, base []float32, _, taus [][]float32, out []float32) {
	lam := float32(e.p.Lambda)
	norm := e.p.Normalize
	weightedSumInto(out, e.w, taus) // the election sums, overwritten below
	for j := range out {
		pos := out[j] >= 0
		var num, den float32
		for m, tau := range taus {
			v := e.w[m] * tau[j]
			if (pos && v > 0) || (!pos && v < 0) {
				num += v
				den += e.w[m]
			}
		}
		var r float32
		if den != 0 {
			r = num
			if norm {
				r = num / den
			}
		}
		out[j] = base[j] + lam*r
	}
}

// linear is the weighted average of the models, Σ w_t θ_t / Σ w_t (no
// division without Normalize); the base is not used.
type linear struct{}

func (linear) normalizes(p Params) bool { return p.Normalize }

func (linear) combine(e *engine, _ []float32, models, _ [][]float32, out []float32) {
	inv := float32(1)
	if e.p.Normalize {
		inv = 1 / e.wsum
	}
	weightedSumInto(out, e.w, models)
	if inv != 1 {
		for j := range out {
			out[j] *= inv
		}
	}
}
