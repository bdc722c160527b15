package merge

import (
	"github.com/npsfuse/npsfuse/gocore/rng"
	"github.com/npsfuse/npsfuse/gocore/topk"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// Method is one row of the registry: how task vectors are sparsified and how
// they are combined.
type Method struct {
	Name     string
	Sparsify Sparsifier
	Combine  Combiner
	// Rows is set for methods that work on whole rows (neurons): their
	// chunks hold whole rows of the tensor's neuron layout, and transposed
	// tensors are seen transposed back.
	Rows bool
	// density, when set, replaces Params' density (NeuroMerging keeps
	// 1 − MaskRate).
	density func(p *Params, m int) float64
}

// Sparsifier trims a model's task vector in place, one chunk at a time.
type Sparsifier interface {
	// usesDensity reports whether the density must lie in (0, 1].
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
	// prepare runs after the sparsifier's prepare for the same units, for
	// statistics the combination needs (cosines, quantiles, ...).
	prepare(e *engine, units []int) error
	// combine merges chunk ch: base and models are the inputs, taus the
	// sparsified task vectors, all in layout order.
	combine(e *engine, ch chunkRef, base []float32, models, taus [][]float32, out []float32)
}

// checker is implemented by components with parameters of their own to
// validate when the merge is set up.
type checker interface {
	check(e *engine) error
}

// wholeModeler is implemented by combiners that need every tensor prepared
// before any is merged.
type wholeModeler interface {
	wholeModel(e *engine) bool
}

// finisher is implemented by combiners with a step that runs once every
// unit is prepared.
type finisher interface {
	finish(e *engine) error
}

var registry = map[string]Method{}

func register(m Method) {
	registry[m.Name] = m
}

func init() {
	register(Method{Name: "linear", Sparsify: keepAll{}, Combine: linear{}})
	register(Method{Name: "task_arithmetic", Sparsify: keepAll{}, Combine: weightedSum{}})
	register(Method{Name: "ties", Sparsify: topK{}, Combine: disjointMean{}})
	register(Method{Name: "magnitude_prune", Sparsify: topK{}, Combine: weightedSum{}})
	register(Method{Name: "dare_linear", Sparsify: dare{}, Combine: weightedSum{}})
	register(Method{Name: "dare_ties", Sparsify: dare{}, Combine: disjointMean{}})
}

// sparsifyState is what a Sparsifier's prepare computes for the chunk loop.
type sparsifyState struct {
	// cuts[m][u] is the top-k cut of model m over selection unit u (a
	// tensor, or everything for ScopeGlobal); the band sparsifier keeps its
	// outer cut in outer.
	cuts, outer [][]cut
	// total[u][m] = Σ|τ_m| over unit u and kept[u][m] = Σ|τ̂_m| under cuts.
	total, kept [][]float64
	// della[gc·T+m]: DELLA's keep bits of chunk gc and model m (della.go).
	della [][]uint64
}

// wantSums reports whether the selections must sum magnitudes (for
// NeuroMerging's σ_t).
func (e *engine) wantSums() bool {
	_, ok := e.method.Combine.(neuroMerge)
	return ok
}

// storeSelections records selectUnits' results: per model, the cut of
// target stride·m (and stride·m+1 into outer when stride is 2).
func (e *engine) storeSelections(which []int, sels []unitSelection, stride int) {
	nu := len(e.units())
	if e.sp.cuts == nil {
		e.sp.cuts, e.sp.outer = make([][]cut, e.T), make([][]cut, e.T)
		for m := range e.T {
			e.sp.cuts[m], e.sp.outer[m] = make([]cut, nu), make([]cut, nu)
		}
		e.sp.total, e.sp.kept = make([][]float64, nu), make([][]float64, nu)
	}
	for i, u := range which {
		sel := sels[i]
		e.sp.total[u] = sel.total
		e.sp.kept[u] = make([]float64, e.T)
		for m := range e.T {
			e.sp.cuts[m][u] = sel.cuts[stride*m]
			e.sp.kept[u][m] = sel.kept[stride*m]
			if stride == 2 {
				e.sp.outer[m][u] = sel.cuts[2*m+1]
			}
		}
	}
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
	sels, err := e.selectUnits(which, e.wantSums(), func(_ int, n int64) []rankTarget {
		ts := make([]rankTarget, e.T)
		for m := range ts {
			ts[m] = rankTarget{m, int64(e.density(m) * float64(n))}
		}
		return ts
	})
	if err != nil {
		return err
	}
	e.storeSelections(which, sels, 1)
	return e.prepareRescale(which, topKMask)
}

// topKMask zeroes the entries outside model m's top-k cut.
func topKMask(e *engine, m int, ch chunkRef, tau []float32) {
	u, c := e.unitChunk(ch)
	keepTop(&e.sp.cuts[m][u], c, tau)
}

func (topK) apply(e *engine, m int, ch chunkRef, tau []float32) {
	topKMask(e, m, ch, tau)
	scaleKept(tau, e.rescaleFactor(ch.ti, m))
}

// magnitudes returns a topk.Source over |θ_m − θ₀| for the given chunks;
// non-finite inputs are recorded in fail (and rank as whatever bits they
// have: the merge is abandoned anyway).
func (e *engine) magnitudes(m int, chunks []chunkRef, fail *chunkError) topk.Source {
	return func(c int, dst []uint32) []uint32 {
		ch := chunks[c]
		n := ch.hi - ch.lo
		ws := e.workspace()
		defer e.scratch.Put(ws)
		if cap(dst) < n {
			dst = make([]uint32, n)
		}
		dst = dst[:n]
		base, err := e.loadBase(ch, ws)
		if err == nil {
			var mv []float32
			if mv, err = e.loadModel(ch, m, ws, ws.models[0]); err == nil {
				for j, x := range mv {
					dst[j] = topk.AbsBits(x - base[j])
				}
				return dst
			}
		}
		fail.set(ch.gc, err)
		clear(dst)
		return dst
	}
}

// dare drops each entry with probability 1 − density (Yu et al. 2024,
// "Language Models are Super Mario", eq. 2) and, with Rescale, scales the
// kept ones by the factor that restores the task vector's L1 norm over the
// tensor (mergekit's rescale; rescale.go). The draw for entry i of tensor
// name and model m is rng.Uniform(rng.Key(seed, name, m), i) < density.
type dare struct{}

func (dare) usesDensity() bool { return true }

// prepare computes the rescale factors. Chunks take dareChunkSums (one
// pass over the stored inputs) where it applies, else the separate loops;
// both give the same sums.
func (dare) prepare(e *engine, units []int) error {
	if !e.p.Rescale {
		return nil
	}
	sums := maskedSums(dareMask)
	return e.prepareRescaleChunks(units, func(ch chunkRef, ws *workspace, acc []float64) error {
		if !generalOnly && dareChunkSums(e, ch, acc) {
			return nil
		}
		return e.rescaleChunkSums(ch, ws, acc, sums)
	})
}

// dareDrop is model m's DARE draw over tensor ti: its stream and the
// threshold of its density (1<<24, every entry kept, at density 1).
func dareDrop(e *engine, m, ti int) vec.Drop {
	thr := uint64(1) << 24
	if d := float32(e.density(m)); d < 1 {
		thr = vec.DareThreshold(d)
	}
	return vec.Drop{Key: rng.Key(e.p.Seed, e.tensors[ti].Name, m), Thr: thr}
}

// dareMask zeroes the entries DARE drops from chunk ch of model m's τ.
func dareMask(e *engine, m int, ch chunkRef, tau []float32) {
	if e.density(m) >= 1 {
		return
	}
	d := dareDrop(e, m, ch.ti)
	vec.DareDrop(tau, d.Key, uint64(ch.lo), d.Thr, 1)
}

func (dare) apply(e *engine, m int, ch chunkRef, tau []float32) {
	if e.density(m) >= 1 {
		return
	}
	d := dareDrop(e, m, ch.ti)
	vec.DareDrop(tau, d.Key, uint64(ch.lo), d.Thr, e.rescaleFactor(ch.ti, m))
}

// weightedSum is task arithmetic (Ilharco et al. 2023, eq. 1):
// θ₀ + λ·Σ w_t τ_t, divided by Σ w_t when Normalize is set.
type weightedSum struct{}

func (weightedSum) normalizes(p Params) bool     { return p.Normalize }
func (weightedSum) prepare(*engine, []int) error { return nil }

// direct is combine computed from the inputs in one pass, with the same
// rounding: θ₀ + λ'·Σ w_t (θ_t − θ₀), the sum in model order.
func (weightedSum) direct(e *engine, _ chunkRef, base []float32, models [][]float32, out []float32) {
	lam := float32(e.p.Lambda)
	if e.p.Normalize {
		lam /= e.wsum
	}
	vec.DeltaSum(out, base, models, e.w, lam)
}

func (weightedSum) readsBase() bool { return true }

func (weightedSum) combine(e *engine, _ chunkRef, base []float32, _, taus [][]float32, out []float32) {
	lam := float32(e.p.Lambda)
	if e.p.Normalize {
		lam /= e.wsum
	}
	vec.WeightedSum(out, taus, e.w, 1)
	for j, b := range base[:len(out)] {
		out[j] = b + lam*out[j]
	}
}

// disjointMean is TIES' elect and disjoint merge (Yadav et al. 2023, §3,
// eqs. for γ and τ_m): γ = sign(Σ w_t τ_t) with γ = +1 when the sum is 0
// (mergekit's rule); the result averages, with weights w_t, the entries whose
// weighted value w_t·τ_t is nonzero and has sign γ (divides by their weight
// sum only when Normalize is set); 0 where none agrees.
type disjointMean struct{}

func (disjointMean) normalizes(Params) bool       { return false }
func (disjointMean) prepare(*engine, []int) error { return nil }

func (disjointMean) combine(e *engine, _ chunkRef, base []float32, _, taus [][]float32, out []float32) {
	lam := float32(e.p.Lambda)
	vec.DisjointMean(out, taus, e.w, e.p.Normalize)
	for j := range out {
		out[j] = base[j] + lam*out[j]
	}
}

// linear is the weighted average of the models, Σ w_t θ_t / Σ w_t (no
// division without Normalize); the base is not used.
type linear struct{}

func (linear) normalizes(p Params) bool     { return p.Normalize }
func (linear) prepare(*engine, []int) error { return nil }

// direct is combine without the base or the task vectors: linear reads
// only the models.
func (l linear) direct(e *engine, ch chunkRef, _ []float32, models [][]float32, out []float32) {
	l.combine(e, ch, nil, models, nil, out)
}

func (linear) readsBase() bool { return false }

// The sum is divided by Σ w_t, not multiplied by its inverse, which rounds
// as mergekit's linear does.
func (linear) combine(e *engine, _ chunkRef, _ []float32, models, _ [][]float32, out []float32) {
	vec.WeightedSum(out, models, e.w, 1)
	if e.p.Normalize {
		for j := range out {
			out[j] /= e.wsum
		}
	}
}
