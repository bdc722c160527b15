//go:build !(goexperiment.simd && amd64)

package evolve

import "github.com/npsfuse/npsfuse/gocore/search"

// accelerated reports whether the vector loops are in use: never in this
// build (no GOEXPERIMENT=simd, or not amd64).
const accelerated = false

// dense is the dense element step of one sub-block (see denseGo).
func (k *kernel) dense(dst, xi []float32, refs [3][]float32, r *search.RNG, thr uint64, jr int) int64 {
	return k.denseGo(dst, xi, refs, r, thr, jr)
}

// mutate writes the donor of the trial's strategy into dst (see mutateGo).
func (k *kernel) mutate(dst, xi []float32, refs [3][]float32) { k.mutateGo(dst, xi, refs) }
