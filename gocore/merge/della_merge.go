package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// DELLA's merge pass in one sweep over each chunk: per entry, τ_m = θ_m − θ₀,
// the keep bit of the preparation applied with the rescale factor (as
// dellaApplyBits: τ·f when kept, +0 when dropped), then TIES' elect and
// disjoint mean (della) or the weighted sum (della_linear) and θ₀ + λ·c,
// every operation the general path's (vec.Sub, dellaApplyBits,
// vec.DisjointMean or vec.WeightedSum, then base + λ·out) in the same
// order with the same rounding, so the bits are the general path's. The
// general path made seven passes over a chunk (four subtractions and
// applications, the combination, the λ loop, the finiteness check and the
// copy to the output); a float32 output is now written in place.

// dellaMergeOp describes one chunk's merge for dellaMerge.
type dellaMergeOp struct {
	w     []float32  // the models' weights
	scale []float32  // the models' rescale factors
	words [][]uint64 // the models' keep bits (bit j: entry j); nil: every entry kept, unscaled
	lam   float32    // λ (divided by Σw for della_linear with Normalize)
	// disjoint: TIES' disjoint mean (norm: divided by the agreeing
	// weights); otherwise the weighted sum.
	disjoint, norm bool
}

// mergeChunk merges chunk ch in one pass when its keep bits were kept by
// the preparation (Rescale on) and its inputs checked there; it reports
// false, having done nothing, to leave the chunk to the general path.
func (magprune) mergeChunk(e *engine, ch chunkRef, ws *workspace) (bool, error) {
	if !dellaFused || e.sp.della == nil || e.T > 8 {
		return false, nil
	}
	u, _ := e.unitChunk(ch)
	if e.checked == nil || !e.checked[u] {
		return false, nil
	}
	op := dellaMergeOp{w: e.w, lam: float32(e.p.Lambda)}
	switch e.method.Combine.(type) {
	case disjointMean:
		op.disjoint, op.norm = true, e.p.Normalize
	case weightedSum:
		if e.p.Normalize {
			op.lam /= e.wsum
		}
	default:
		return false, nil
	}
	var scales [8]float32
	var words [8][]uint64
	for m := range e.T {
		scales[m] = 1
		if e.density(m) >= 1 {
			continue // apply keeps every entry unscaled
		}
		k := ch.gc*e.T + m
		if e.sp.della[k] == nil {
			return false, nil // not prepared (or already merged): the general path
		}
	}
	for m := range e.T {
		if e.density(m) >= 1 {
			continue
		}
		k := ch.gc*e.T + m
		words[m], e.sp.della[k] = e.sp.della[k], nil // applied once, as apply does
		scales[m] = e.rescaleFactor(ch.ti, m)
	}
	op.scale, op.words = scales[:e.T], words[:e.T]

	t := &e.tensors[ch.ti]
	n := ch.hi - ch.lo
	base := e.view(t.Base, ch, ws, ws.base)
	models := ws.views[:e.T:e.T]
	for m := range e.T {
		models[m] = e.view(t.Models[m], ch, ws, ws.models[m])
	}
	out := ws.out[:n]
	inPlace := t.Out.DType == tensor.F32 && !e.geom[ch.ti].transposed
	if inPlace {
		out = t.Out.F32[ch.lo:ch.hi]
	}
	if !dellaMerge(out, base, models, &op) || !inPlace {
		// Not finite although the inputs are, or a narrower dtype that a
		// finite result may overflow.
		if err := e.checkResult(ch, out); err != nil {
			return true, err
		}
	}
	if !inPlace {
		e.store(t.Out, ch, ws, out)
	}
	return true, nil
}

// dellaMergeGo is dellaMerge in plain Go.
func dellaMergeGo(out, base []float32, x [][]float32, op *dellaMergeOp) bool {
	return dellaMergeFrom(out, base, x, op, 0)
}

// dellaMergeFrom is dellaMerge for the entries from j = from on.
func dellaMergeFrom(out, base []float32, x [][]float32, op *dellaMergeOp, from int) bool {
	T := len(x)
	base = base[:len(out)]
	var v [8]float32
	fin := true
	for j := from; j < len(out); j++ {
		b := base[j]
		var sum float32
		for m := range T {
			t := x[m][j] - b
			if ws := op.words[m]; ws != nil {
				// τ·f kept, +0 dropped, without a branch on the random bit.
				keep := -uint32(ws[j>>6] >> (j & 63) & 1)
				t = math.Float32frombits(math.Float32bits(t*op.scale[m]) & keep)
			}
			vm := float32(op.w[m] * t)
			v[m] = vm
			if m == 0 {
				sum = vm
			} else {
				sum += vm
			}
		}
		r := sum
		if op.disjoint {
			// vec's disjointMeanGo, branch-free on the sign bits.
			g := vec.ElectedSign(sum)
			var num, den float32
			for m := range T {
				mask := vec.AgreeMask(v[m], g)
				num += math.Float32frombits(math.Float32bits(v[m]) & mask)
				den += math.Float32frombits(math.Float32bits(op.w[m]) & mask)
			}
			r = num
			if op.norm && den != 0 {
				r = num / den
			}
		}
		o := b + float32(op.lam*r)
		out[j] = o
		if math.Float32bits(o)&0x7f800000 == 0x7f800000 {
			fin = false
		}
	}
	return fin
}
