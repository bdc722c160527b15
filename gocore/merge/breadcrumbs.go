package merge

import "github.com/npsfuse/npsfuse/gocore/topk"

// Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling
// Multi-Task Model Merging with Sparse Masks", ECCV 2024, §3.1, eq. 2): per
// model, mask out the largest fraction γ of |τ| (outliers) and the smallest
// ones, keeping the band in between, then merge by task arithmetic
// (`breadcrumbs`) or by TIES' elect and disjoint mean (`breadcrumbs_ties`).
//
// Counts follow mergekit's magnitude_outliers: with n entries in the
// selection unit, k = ⌊density·n⌋ are kept and the top ⌊γ·n⌋ dropped, the
// drop shrinking to n − k when the two overlap; so the kept entries are the
// ranks [g, g+k) from the top, g = min(⌊γ·n⌋, n − k), ties by lower index
// as for top-k. Density 1 keeps everything (also as in mergekit). Unlike
// mergekit, g = 0 keeps the top k (mergekit's slice then keeps nothing).
func init() {
	register(Method{Name: "breadcrumbs", Sparsify: band{}, Combine: weightedSum{}})
	register(Method{Name: "breadcrumbs_ties", Sparsify: band{}, Combine: disjointMean{}})
}

// band keeps the entries of rank [g, g+k) by magnitude (see above): those
// inside the top-(g+k) cut and outside the top-g cut.
type band struct{}

func (band) usesDensity() bool { return true }

// bandCounts returns g and k for model m over n entries.
func (e *engine) bandCounts(m int, n int64) (g, k int64) {
	k = int64(e.density(m) * float64(n))
	g = int64(e.p.gamma(m) * float64(n))
	g = min(g, n-k)
	return g, k
}

func (band) prepare(e *engine, which []int) error {
	sels, err := e.selectUnits(which, false, func(_ int, n int64) []rankTarget {
		ts := make([]rankTarget, 0, 2*e.T)
		for m := range e.T {
			if e.density(m) >= 1 { // keep everything, as mergekit does
				ts = append(ts, rankTarget{m, n}, rankTarget{m, 0})
				continue
			}
			g, k := e.bandCounts(m, n)
			ts = append(ts, rankTarget{m, g + k}, rankTarget{m, g})
		}
		return ts
	})
	if err != nil {
		return err
	}
	e.storeSelections(which, sels, 2)
	return e.prepareRescale(which, bandMask)
}

func (band) apply(e *engine, m int, ch chunkRef, tau []float32) {
	bandMask(e, m, ch, tau)
	scaleKept(tau, e.rescaleFactor(ch.ti, m))
}

// bandMask zeroes the entries outside model m's band.
func bandMask(e *engine, m int, ch chunkRef, tau []float32) {
	u, c := e.unitChunk(ch)
	in, out := &e.sp.cuts[m][u], &e.sp.outer[m][u]
	if out.none {
		keepTop(in, c, tau)
		return
	}
	if in.none || out.all {
		clear(tau)
		return
	}
	// Entries inside the inner cut but not the outer one (in.all: every
	// entry passes the inner test).
	ib, ob := in.bits, out.bits
	iallow, oallow := -1, out.allowance(c)
	if !in.all {
		iallow = in.allowance(c)
	}
	for j, x := range tau {
		a := topk.AbsBits(x)
		inner := in.all || a > ib
		if !inner && a == ib && iallow != 0 {
			iallow--
			inner = true
		}
		outer := a > ob
		if !outer && a == ob && oallow != 0 {
			oallow--
			outer = true
		}
		if !inner || outer {
			tau[j] = 0
		}
	}
}
