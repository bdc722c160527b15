package merge

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// The fused merge pass of the TIES family (issue 15): ties,
// magnitude_prune, breadcrumbs, breadcrumbs_ties, consensus_ta and
// consensus_ties merge a chunk with one vec.MergeTasks call that reads the
// base and the models where they are stored and writes the result in place,
// instead of forming, masking, scaling and combining task-vector buffers in
// separate passes (mergeChunk's general path). The result is bit for bit
// the general path's (the same float32 operations in the same order);
// fused_test.go compares the two on every method.

// bander is a Sparsifier whose mask is a band of magnitude cuts (top-k,
// Breadcrumbs), known once the unit is prepared.
type bander interface {
	// band is model m's keep rule over chunk c of unit u.
	band(e *engine, m, u, c int) vec.Band
}

// taskCombiner is a Combiner that vec.MergeTasks computes.
type taskCombiner interface {
	// taskMerge fills the combination's fields of p (weights, mode, λ).
	taskMerge(e *engine, p *vec.TaskMerge)
}

// vecCut is cut ct as a vec.Cut over chunk c of its unit.
func (ct *cut) vecCut(c int) vec.Cut {
	switch {
	case ct.all:
		return vec.Everything
	case ct.none:
		return vec.Nothing
	}
	return vec.Cut{Bits: ct.bits, Allow: ct.allowance(c)}
}

func (topK) band(e *engine, m, u, c int) vec.Band {
	return vec.Band{In: e.sp.cuts[m][u].vecCut(c), Out: vec.Nothing}
}

// band is bandMask's rule: inside the inner (top g+k) cut, outside the
// outer (top g) one.
func (band) band(e *engine, m, u, c int) vec.Band {
	return vec.Band{In: e.sp.cuts[m][u].vecCut(c), Out: e.sp.outer[m][u].vecCut(c)}
}

func (weightedSum) taskMerge(e *engine, p *vec.TaskMerge) {
	p.W = e.w
	p.Lam = float32(e.p.Lambda)
	if e.p.Normalize {
		p.Lam /= e.wsum
	}
}

func (disjointMean) taskMerge(e *engine, p *vec.TaskMerge) {
	p.W, p.Disjoint, p.Norm = e.w, true, e.p.Normalize
	p.Lam = float32(e.p.Lambda)
}

func (c consensus) taskMerge(e *engine, p *vec.TaskMerge) {
	p.W = e.w
	if c.ties {
		p.Disjoint, p.Norm = true, e.p.Normalize
	} else if e.p.Normalize {
		p.DivOn, p.Div = true, e.wsum
	}
	p.TallLam = make([]float32, e.T)
	for m := range p.TallLam {
		p.TallLam[m] = float32(e.p.tallLambda(m))
	}
	p.K = e.p.K
	p.Lam = float32(e.p.Lambda)
}

// fusedPlan returns the template of the method's fused merge pass, or nil
// when the method does not have one: a combiner vec.MergeTasks computes, a
// sparsifier that keeps everything, a band or DARE's random drop (with the
// vector draw), element-wise chunks and at most 8 models.
func (e *engine) fusedPlan() *vec.TaskMerge {
	tc, ok := e.method.Combine.(taskCombiner)
	if !ok || e.method.Rows || e.T < 1 || e.T > 8 {
		return nil
	}
	switch e.method.Sparsify.(type) {
	case keepAll, bander:
	case dare:
		// The draws need the vector loop (AVX-512); without it the
		// general path's vector loops are faster than the scalar twin.
		if !vec.DropVectorized() {
			return nil
		}
	default:
		return nil
	}
	p := &vec.TaskMerge{}
	tc.taskMerge(e, p)
	return p
}

// mergeFused merges chunk ch with vec.MergeTasks (see fusedPlan). Float32
// inputs are read in place and a float32 output is written in place. The
// inputs of a unit whose selection already checked them are not checked
// again; otherwise the kernel checks them along with the result and, when
// something is not finite, the inputs are searched for the culprit so that
// the error names the entry the general path names.
func (e *engine) mergeFused(tmpl *vec.TaskMerge, ch chunkRef, ws *workspace) error {
	if e.premerged != nil && e.premerged[ch.gc] {
		e.premerged[ch.gc] = false // written by the one-pass selection
		return nil
	}
	t := &e.tensors[ch.ti]
	n := ch.hi - ch.lo
	u, c := e.unitChunk(ch)
	checked := e.checked != nil && e.checked[u]
	// bfloat16 inputs are read in place (MergeTasksBF16); others are
	// viewed as float32 (in place, or widened into the workspace).
	wide := t.Base.DType == tensor.BF16
	for _, x := range t.Models {
		wide = wide && x.DType == tensor.BF16
	}
	views := func() (base []float32, models [][]float32) {
		base = t.Base.View(ch.lo, n, ws.base)
		models = ws.views[:e.T:e.T]
		for m := range e.T {
			models[m] = t.Models[m].View(ch.lo, n, ws.models[m])
		}
		return base, models
	}
	var base []float32
	var models [][]float32
	if !wide {
		base, models = views()
	}
	p := *tmpl
	p.Check = !checked
	if bd, ok := e.method.Sparsify.(bander); ok {
		if cap(ws.bands) < e.T {
			ws.bands = make([]vec.Band, e.T)
		}
		p.Bands = ws.bands[:e.T]
		for m := range e.T {
			p.Bands[m] = bd.band(e, m, u, c)
		}
	}
	if _, ok := e.method.Sparsify.(dare); ok {
		if cap(ws.drops) < e.T {
			ws.drops = make([]vec.Drop, e.T)
		}
		p.Drop, p.Start = ws.drops[:e.T], uint64(ch.lo)
		for m := range e.T {
			p.Drop[m] = dareDrop(e, m, ch.ti)
		}
	}
	if e.rescale != nil && e.rescale[ch.ti] != nil {
		for _, f := range e.rescale[ch.ti] {
			if f != 1 {
				p.Scale = e.rescale[ch.ti]
				break
			}
		}
	}
	out := ws.out[:n]
	inPlace := t.Out.DType == tensor.F32
	if inPlace {
		out = t.Out.F32[ch.lo:ch.hi]
	}
	var fin bool
	if wide {
		if cap(ws.views16) < e.T {
			ws.views16 = make([][]uint16, e.T)
		}
		x16 := ws.views16[:e.T]
		for m := range e.T {
			x16[m] = t.Models[m].U16[ch.lo:ch.hi]
		}
		fin = vec.MergeTasksBF16(out, t.Base.U16[ch.lo:ch.hi], x16, &p)
	} else {
		fin = vec.MergeTasks(out, base, models, &p)
	}
	if !fin {
		if wide { // the culprit is named from the float32 values
			base, models = views()
		}
		if !checked {
			if !vec.Finite(base) {
				return e.nonFinite(ch, "the base model", base)
			}
			for m, x := range models {
				if !vec.Finite(x) {
					return e.nonFinite(ch, fmt.Sprintf("model %d", m), x)
				}
			}
		}
		if err := e.checkResult(ch, out); err != nil {
			return err
		}
	} else if !inPlace {
		// A finite result can still overflow a narrower dtype.
		if err := e.checkResult(ch, out); err != nil {
			return err
		}
	}
	if !inPlace {
		t.Out.Store(out, ch.lo)
	}
	return nil
}
