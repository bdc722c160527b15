package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// NeuroMerging's merge pass for the chunks of neuron tensors: per model,
// τ = θ_m − θ₀ and the trim to the model's top-k cut in one pass
// (subKeepTop: vec.Sub then vec.KeepTop's decisions, the tie allowance
// consumed in index order), the rescale factor as topK.apply, then the
// per-neuron kernel writing a float32 output in place. The operations and
// their order are the general path's, so are the bits; the pass saves the
// trim's second sweep over each task vector and the copy of the result.

// mergeChunk merges chunk ch of a neuron tensor whose inputs the selection
// checked; it reports false, having done nothing, for the general path
// (1-D tensors, unchecked inputs).
func (neuroMerge) mergeChunk(e *engine, ch chunkRef, ws *workspace) (bool, error) {
	g := &e.geom[ch.ti]
	u, c := e.unitChunk(ch)
	if !g.neuron || e.checked == nil || !e.checked[u] || e.sp.cuts == nil {
		return false, nil
	}
	t := &e.tensors[ch.ti]
	n := ch.hi - ch.lo
	base := e.view(t.Base, ch, ws, ws.base)
	taus := ws.tauViews[:e.T:e.T]
	for m := range e.T {
		x := e.view(t.Models[m], ch, ws, ws.models[m])
		tau := ws.taus[m][:n]
		ct := &e.sp.cuts[m][u]
		switch {
		case ct.none:
			clear(tau)
		case ct.all:
			vec.Sub(tau, x, base)
		default:
			subKeepTop(tau, x, base, ct.bits, ct.allowance(c))
		}
		scaleKept(tau, e.rescaleFactor(ch.ti, m))
		taus[m] = tau
	}
	out := ws.out[:n]
	inPlace := t.Out.DType == tensor.F32 && !g.transposed
	if inPlace {
		out = t.Out.F32[ch.lo:ch.hi]
	}
	neuroMerge{}.combine(e, ch, base, nil, taus, out)
	if err := e.checkResult(ch, out); err != nil {
		return true, err
	}
	if !inPlace {
		e.store(t.Out, ch, ws, out)
	}
	return true, nil
}

// subKeepTop sets tau[j] = x[j] − b[j] and then, as vec.KeepTop(tau, bits,
// allow), to +0 unless its magnitude bits exceed bits, or equal them while
// allow is not 0 (allow > 0 counts down; allow < 0 keeps every tie); it
// returns what is left of allow. x and b must be at least len(tau) long.
func subKeepTop(tau, x, b []float32, bits uint32, allow int) int {
	if len(x) < len(tau) || len(b) < len(tau) {
		panic("merge.subKeepTop: inputs shorter than tau")
	}
	return subKeepTopVec(tau, x[:len(tau)], b[:len(tau)], bits, allow)
}

// subKeepTopGo is subKeepTop in plain Go.
func subKeepTopGo(tau, x, b []float32, bits uint32, allow int) int {
	for j := range tau {
		v := x[j] - b[j]
		a := math.Float32bits(v) & 0x7fffffff
		switch {
		case a > bits:
		case a == bits && allow != 0:
			if allow > 0 {
				allow--
			}
		default:
			v = 0
		}
		tau[j] = v
	}
	return allow
}
