//go:build !(goexperiment.simd && amd64)

package vec

func mergeTasks(out, base []float32, x [][]float32, p *TaskMerge) bool {
	if p.base16 != nil {
		return mergeTasksGoBF16(out, p)
	}
	return mergeTasksGo(out, base, x, p)
}

func countDiffWindows(x, b []float32, lo, hi []uint32, above []int64, cands [][]uint32) bool {
	return countDiffWindowsGo(x, b, lo, hi, above, cands)
}

func meanLerp(out, base []float32, x [][]float32, _, t, omt float32) bool {
	return meanLerpGo(out, base, x, t, omt)
}

// taskGrams has no scalar twin: the caller's separate loops are it.
func taskGrams([]float64, []float32, [][]float32) bool { return false }
