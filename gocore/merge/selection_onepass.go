package merge

import (
	"math"
	"math/bits"
	"sync"

	"github.com/npsfuse/npsfuse/gocore/tensor"
	"github.com/npsfuse/npsfuse/gocore/vec"
)

// The one-pass TIES family (issue 15). The top-k cut of a unit needs all
// of the unit's magnitudes, so the two-pass path reads every input twice:
// once to count (selectUnits) and once to merge (mergeFused). But the
// strided sample already brackets each cut in a window [lo, hi] of
// magnitude bits: an entry above hi is surely kept, one below lo surely
// dropped. So, when the outputs are at hand, the counting pass also merges
// each chunk while it is in the cache, with every model's cut put at its
// window's middle (vec.MergeTasks with provisional bands), and keeps, for
// the few entries where some model's magnitude lies in its window (flagged
// by countFlag), their index, inputs and provisional result. Once the
// exact cuts are known (finishCut), those entries alone are merged again
// from the kept inputs with the exact bands (patch), and the results that
// differ from the provisional ones are written over them. The middle of
// the window is a guess of the cut that most flagged entries' decisions
// agree with, so most of their provisional results stand and the patch
// writes a few scattered entries instead of every flagged one (its writes
// miss the cache: the output was written a unit ago). The AVX-512 pass
// (countGather) stores the provisional results of the flagged entries;
// the other passes store +0 there, which the patch then overwrites.
//
// The result is bit for bit the two-pass result: an entry that is not
// flagged has, for every model, a magnitude above hi (so above the cut,
// which is a candidate, ≤ hi: kept either way) or below lo (dropped either
// way); the flagged entries of a chunk are all its entries equal to a cut,
// in index order, so the exact bands' tie allowances are consumed by the
// same entries as over the whole chunk; MergeTasks is element-wise. A
// chunk whose provisional or patched values fail the result check, and
// every chunk of a unit whose cut the window missed (exactCut), is left to
// the merge pass (not marked premerged), which then merges it, or reports
// its error, as before.
//
// Eligible: the fused plan of a top-k or Breadcrumbs band method (ties,
// magnitude_prune, breadcrumbs, breadcrumbs_ties, consensus_ties) without
// Rescale or magnitude sums, per-tensor scope, units larger than exactUnit
// (smaller ones have whole-range windows: every entry would be flagged),
// and an output buffer for every tensor of the unit.

// onePass is the one-pass state of one selectUnits call.
type onePass struct {
	stride int      // targets per model: 1 (top-k) or 2 (band: inner, outer)
	units  []opUnit // per unit of the call
	tmpl   vec.TaskMerge
}

// opUnit is one unit's state.
type opUnit struct {
	on     bool
	fw     flagWindows
	wins   []int      // the selection window of each of fw's windows
	bands  []vec.Band // provisional, per model
	chunks []opChunk
}

// opChunk holds a chunk's flagged entries: their indices in the chunk,
// their inputs, gathered (x[m][i] is model m's value at idx[i]), and the
// provisional results the counting pass wrote there (prov[i]).
type opChunk struct {
	ok   bool // merged provisionally and checked
	buf  *gatherBuf
	idx  []int32
	base []float32
	x    [][]float32
	prov []float32
}

// twoPassOnly turns the one-pass path off (tests compare the two).
var twoPassOnly bool

// onePassStride is the targets per model of the method's selection, 0
// when the one-pass path does not apply to the engine at all.
func (e *engine) onePassStride(sums bool) int {
	if sums || generalOnly || twoPassOnly || e.fused == nil || e.p.Rescale || e.p.Scope == ScopeGlobal || e.method.Rows {
		return 0
	}
	switch e.method.Sparsify.(type) {
	case topK:
		return 1
	case band:
		return 2
	}
	return 0
}

// newOnePass plans the one-pass merge of the units (selectUnits' steps 1
// and 2): nil when no unit is eligible.
func (e *engine) newOnePass(units []int, sums bool, tgts [][]rankTarget, wins [][]window, winOf [][]int) *onePass {
	s := e.onePassStride(sums)
	if s == 0 {
		return nil
	}
	all := e.units()
	op := &onePass{stride: s, units: make([]opUnit, len(units)), tmpl: *e.fused}
	any := false
	for i, u := range units {
		un := all[u]
		if un.n <= exactUnit || len(tgts[i]) != s*e.T || len(wins[i]) > maxFlagWindows {
			continue
		}
		ok := true
		for _, ti := range un.tensors {
			if e.tensors[ti].Out.DType == 0 {
				ok = false
			}
		}
		for ti, t := range tgts[i] {
			if t.m != ti/s {
				ok = false
			}
		}
		if !ok {
			continue
		}
		ou := &op.units[i]
		// Flag the windows of the targets that have a cut to find.
		flag := make([]bool, len(wins[i]))
		for ti, t := range tgts[i] {
			if t.k > 0 && t.k < un.n {
				flag[winOf[i][ti]] = true
			}
		}
		for w, win := range wins[i] {
			ou.fw.add(win.m, win.lo, win.hi, flag[w])
			ou.wins = append(ou.wins, w)
		}
		prov := func(ti int) vec.Cut {
			t := tgts[i][ti]
			switch {
			case t.k <= 0:
				return vec.Nothing
			case t.k >= un.n:
				return vec.Everything
			}
			// Any cut in [lo, hi] gives the entries outside the window
			// their exact decisions; the middle is the likeliest.
			w := wins[i][winOf[i][ti]]
			hi := min(w.hi, 0x7fffffff)
			return vec.Cut{Bits: min(w.lo, hi) + (hi-min(w.lo, hi))/2, Allow: 0}
		}
		ou.bands = make([]vec.Band, e.T)
		for m := range e.T {
			ou.bands[m] = vec.Band{In: prov(s * m), Out: vec.Nothing}
			if s == 2 {
				ou.bands[m].Out = prov(s*m + 1)
			}
		}
		ou.chunks = make([]opChunk, len(un.chunks))
		ou.on, any = true, true
	}
	if !any {
		return nil
	}
	if e.premerged == nil {
		e.premerged = make([]bool, len(e.chunks))
	}
	return op
}

// countMerge is the counting pass over chunk c of the call's unit i with
// the provisional merge (see onePass); chunks of units that are not
// eligible, and chunks with a non-finite input (whose error countChunk
// names), take countChunk.
func (op *onePass) countMerge(e *engine, i, c int, ch chunkRef, ws *workspace, wins []window) (chunkCount, error) {
	if op == nil || !op.units[i].on {
		return e.countChunk(ch, ws, wins, false)
	}
	// The counting pass now does the merge's work: it stops on a cancel
	// within one chunk, as the merge pass does.
	if err := e.cancelled(); err != nil {
		return chunkCount{}, err
	}
	ou := &op.units[i]
	t := &e.tensors[ch.ti]
	n := ch.hi - ch.lo
	base := t.Base.View(ch.lo, n, ws.base)
	models := ws.views[:e.T:e.T]
	for m := range e.T {
		models[m] = t.Models[m].View(ch.lo, n, ws.models[m])
	}
	// The provisional merge, with the flagged entries gathered in the loop
	// (countGather), from the registers (countFlagMerge) or the cache
	// (countFlag, then vec.MergeTasks).
	p := op.tmpl
	p.Check = false
	p.Bands = ou.bands
	out := ws.out[:n]
	inPlace := t.Out.DType == tensor.F32
	if inPlace {
		out = t.Out.F32[ch.lo:ch.hi]
	}
	s, _ := cgPool.Get().(*cgScratch)
	if s == nil {
		s = new(cgScratch)
	}
	defer cgPool.Put(s)
	var cc chunkCount
	var oc opChunk
	in, fin, ok := countGather(out, base, models, &ou.fw, &p, s)
	if ok {
		if !in {
			return e.countChunk(ch, ws, wins, false)
		}
		cc, oc = gathered(e.T, ou, s, len(wins), out)
	} else {
		W := ou.fw.n
		var above [maxFlagWindows]int64
		var cands [maxFlagWindows][]uint32
		flags := make([]uint8, (n+7)/8)
		var fused bool
		in, fin, fused = countFlagMerge(out, base, models, &ou.fw, above[:W], cands[:W], flags, &p)
		if !fused {
			in = countFlag(models, base, &ou.fw, above[:W], cands[:W], flags)
			if in {
				fin = vec.MergeTasks(out, base, models, &p)
			}
		}
		if !in {
			return e.countChunk(ch, ws, wins, false)
		}
		cc = chunkCount{win: make([]winCount, len(wins)), sumAll: make([]float64, e.T)}
		for k, w := range ou.wins {
			cc.win[w] = winCount{above: above[k], cands: cands[k]}
		}
		oc = gatherFlags(e.T, flags, base, models, out)
	}
	oc.ok = true
	if !fin || !inPlace {
		oc.ok = e.checkResult(ch, out) == nil
	}
	if !inPlace {
		t.Out.Store(out, ch.lo)
	}
	ou.chunks[c] = oc
	return cc, nil
}

// cgPool recycles countGather's scratch.
var cgPool sync.Pool

// gathered copies countGather's windows and flagged entries out of s:
// the chunk's counts (candidates in one allocation) and its opChunk, with
// the provisional results read from the chunk's out.
func gathered(T int, ou *opUnit, s *cgScratch, nwin int, out []float32) (chunkCount, opChunk) {
	cc := chunkCount{win: make([]winCount, nwin), sumAll: make([]float64, T)}
	total := 0
	for k := range ou.wins {
		total += s.nc[k]
	}
	slab := make([]uint32, total)
	for k, w := range ou.wins {
		c := s.nc[k]
		copy(slab, s.cand[k][:c])
		cc.win[w] = winCount{above: s.above[k], cands: slab[:c:c]}
		slab = slab[c:]
	}
	F := s.nf
	oc := newOpChunk(T, F)
	copy(oc.idx, s.idx[:F])
	copy(oc.base, s.base[:F])
	for m := range T {
		copy(oc.x[m], s.x[m][:F])
	}
	for k, j := range oc.idx {
		oc.prov[k] = out[j]
	}
	return cc, oc
}

// newOpChunk returns an opChunk with room for F flagged entries of T
// models, in one recycled buffer (with room for the patch's results).
func newOpChunk(T, F int) opChunk {
	oc := opChunk{x: make([][]float32, T)}
	oc.buf = getGather((T+3)*F, F)
	vals := oc.buf.v[:(T+2)*F]
	oc.idx = oc.buf.i[:F]
	oc.base = vals[:F:F]
	for m := range T {
		oc.x[m] = vals[(m+1)*F : (m+2)*F : (m+2)*F]
	}
	oc.prov = vals[(T+1)*F : (T+2)*F : (T+2)*F]
	return oc
}

// gatherFlags gathers the flagged entries' indices and inputs (flags as
// countFlag sets them) and sets their results in out to +0 (patched
// later; 0 passes the result check).
func gatherFlags(T int, flags []uint8, base []float32, models [][]float32, out []float32) opChunk {
	F := 0
	for _, f := range flags {
		F += bits.OnesCount8(f)
	}
	oc := newOpChunk(T, F)
	clear(oc.prov)
	k := 0
	for g, f := range flags {
		for f != 0 {
			j := g<<3 | bits.TrailingZeros8(f)
			f &= f - 1
			oc.idx[k] = int32(j)
			oc.base[k] = base[j]
			out[j] = 0
			k++
		}
	}
	for m, xm := range models {
		dst := oc.x[m]
		for k, j := range oc.idx {
			dst[k] = xm[j]
		}
	}
	return oc
}

// patch merges the flagged entries of unit i's chunks with the unit's
// exact cuts (sel.cuts, stride targets per model) and marks the chunks
// whose results are complete as premerged.
func (op *onePass) patch(e *engine, i int, un unit, sel *unitSelection) {
	ou := &op.units[i]
	T := e.T
	e.p.Pool.For(len(un.chunks), func(_, c int) {
		oc := &ou.chunks[c]
		ch := un.chunks[c]
		if !oc.ok {
			return
		}
		if len(oc.idx) > 0 {
			p := op.tmpl
			p.Check = false
			p.Bands = make([]vec.Band, T)
			for m := range T {
				p.Bands[m] = vec.Band{In: sel.cuts[op.stride*m].vecCut(c), Out: vec.Nothing}
				if op.stride == 2 {
					p.Bands[m].Out = sel.cuts[op.stride*m+1].vecCut(c)
				}
			}
			F := len(oc.idx)
			res := oc.buf.v[(T+2)*F : (T+3)*F] // room newOpChunk left
			// countGather without windows is MergeTasks 16 lanes wide
			// (bands without tie allowances left; else it declines).
			s, _ := cgPool.Get().(*cgScratch)
			if s == nil {
				s = new(cgScratch)
			}
			var none flagWindows
			_, fin, ok := countGather(res, oc.base, oc.x, &none, &p, s)
			cgPool.Put(s)
			if !ok {
				fin = vec.MergeTasks(res, oc.base, oc.x, &p)
			}
			t := &e.tensors[ch.ti]
			inPlace := t.Out.DType == tensor.F32
			if !fin || !inPlace {
				if e.checkResult(ch, res) != nil {
					return
				}
			}
			// Only the results that differ from the provisional ones
			// (bit for bit: ±0 differ) are written.
			if inPlace {
				out := t.Out.F32[ch.lo:ch.hi]
				for k, j := range oc.idx {
					if math.Float32bits(res[k]) != math.Float32bits(oc.prov[k]) {
						out[j] = res[k]
					}
				}
			} else {
				for k, j := range oc.idx {
					if math.Float32bits(res[k]) != math.Float32bits(oc.prov[k]) {
						t.Out.SetAt(ch.lo+int(j), res[k])
					}
				}
			}
		}
		e.premerged[ch.gc] = true
	})
	for c := range ou.chunks {
		putGather(ou.chunks[c].buf)
	}
	ou.chunks = nil
}

// gatherBuf is an opChunk's storage, recycled from unit to unit (a
// fresh allocation per chunk cost as much as the memory traffic the
// one-pass path saves: zeroing and garbage).
type gatherBuf struct {
	v []float32
	i []int32
}

var gatherPool sync.Pool

// getGather returns a buffer with room for nv values and ni indices.
func getGather(nv, ni int) *gatherBuf {
	if b, ok := gatherPool.Get().(*gatherBuf); ok && cap(b.v) >= nv && cap(b.i) >= ni {
		return b
	}
	// Powers of two: the chunks' flagged counts differ a little, and a
	// buffer sized to one chunk's exact count would be too small for
	// every larger one (dropped, another allocated and cleared).
	up := func(n int) int { return 1 << bits.Len(uint(max(n, 1024)-1)) }
	return &gatherBuf{v: make([]float32, up(nv)), i: make([]int32, up(ni))}
}

// putGather recycles b (nil: nothing).
func putGather(b *gatherBuf) {
	if b != nil {
		gatherPool.Put(b)
	}
}
