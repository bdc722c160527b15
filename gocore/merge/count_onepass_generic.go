//go:build !(goexperiment.simd && amd64)

package merge

import "github.com/npsfuse/npsfuse/gocore/vec"

// countFlag is countFlagGo in the plain build.
func countFlag(x [][]float32, b []float32, fw *flagWindows, above []int64, cands [][]uint32, flags []uint8) bool {
	return countFlagGo(x, b, fw, above, cands, flags)
}

// countFlagMerge has no plain-Go loop of its own: the caller takes
// countFlag and vec.MergeTasks.
func countFlagMerge(out, b []float32, x [][]float32, fw *flagWindows, above []int64, cands [][]uint32, flags []uint8, p *vec.TaskMerge) (fin, rfin, ok bool) {
	return false, false, false
}

// countGather has no plain-Go loop of its own: the caller takes the
// separate loops.
func countGather(out, b []float32, x [][]float32, fw *flagWindows, p *vec.TaskMerge, s *cgScratch) (fin, rfin, ok bool) {
	return false, false, false
}

// cgBlock sizes cgScratch's block buffers (count_onepass512_amd64.go).
const cgBlock = 16

// appendMags16 is appendMags16Go in the plain build.
func appendMags16(s []uint32, x, b *[16]float32) []uint32 { return appendMags16Go(s, x, b) }
