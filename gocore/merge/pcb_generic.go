//go:build !(goexperiment.simd && amd64)

package merge

// pcbBetaKeys is pcbBetaKeysGo over the first n entries in the plain build.
func pcbBetaKeys(dst [][]uint32, base []float32, xs [][]float32, cuts []pcbCut, n int) {
	pcbBetaKeysGo(dst, base, xs, cuts, 0, n)
}

// pcbMerge is pcbMergeGo over every entry of out in the plain build.
func pcbMerge(out, base []float32, xs [][]float32, sub bool, keys [][]uint32, off int, cuts []pcbCut, w []float32, lam float32) {
	pcbMergeGo(out, base, xs, sub, keys, off, cuts, w, lam, 0, len(out))
}

// collectBins is collectBinsGo in the plain build.
func collectBins(keys []uint32, p, q uint32, two bool, li, lj []uint32) ([]uint32, []uint32) {
	return collectBinsGo(keys, p, q, two, li, lj)
}

// pcbAbsKeys is pcbAbsKeysGo over the first n entries in the plain build.
func pcbAbsKeys(dst [][]uint32, taus [][]float32, n int) {
	pcbAbsKeysGo(dst, taus, 0, n)
}

// pcbScan is pcbScanGo in the plain build.
func pcbScan(keys []uint32, lo, hi uint32, collect bool, cand []uint32) (above, inside int, mx uint32, out []uint32) {
	return pcbScanGo(keys, lo, hi, collect, cand)
}

// pcbBetaScan is pcbBetaKeys followed by every model's pcbScan in the
// plain build.
func pcbBetaScan(dst [][]uint32, base []float32, xs [][]float32, cuts []pcbCut, n int, st []pcbScanState) {
	pcbBetaKeys(dst, base, xs, cuts, n)
	for m := range st {
		st[m].scan(dst[m][:n])
	}
}

// pcbTailsScanSub is pcbTailsScanSubGo over all of x in the plain build.
func pcbTailsScanSub(x, base []float32, t *pcbTails) bool {
	return pcbTailsScanSubGo(x, base, t, 0, len(x))
}

// pcbMergeScored is pcbMergeScoredGo over every entry of out in the plain
// build (always taken).
func pcbMergeScored(out, base []float32, xs [][]float32, sub bool, cuts []pcbCut, w []float32, lam float32) bool {
	pcbMergeScoredGo(out, base, xs, sub, cuts, w, lam, 0, len(out))
	return true
}
