package nps

import (
	"fmt"

	"github.com/npsfuse/npsfuse/gocore/parallel"
	"github.com/npsfuse/npsfuse/gocore/tensor"
)

// Apply writes out = base + Σ_i lam[i]·taus[i] in float32 arithmetic,
// rounded to out's dtype: transfer (one task vector, METHODS.md "Uses":
// θ₀ + λ·τ_NPS) and fusion (θ₀ + Σ λ_i τ_NPS,i). All vectors have base's
// length; out must not alias an input. Parallel over chunks (on pool); the sum runs
// in task order, so results do not depend on the thread count.
func Apply(pool parallel.Pool, out, base tensor.Vec, taus []tensor.Vec, lam []float32) error {
	n := base.Len()
	if len(taus) != len(lam) {
		return fmt.Errorf("%w: %d task vectors, %d scales", ErrInput, len(taus), len(lam))
	}
	if out.Len() != n {
		return fmt.Errorf("%w: output has %d elements, base has %d", ErrInput, out.Len(), n)
	}
	for i, t := range taus {
		if t.Len() != n {
			return fmt.Errorf("%w: task vector %d has %d elements, base has %d", ErrInput, i, t.Len(), n)
		}
	}
	bufs := make([][]float32, pool.Workers(parallel.NumChunks(n)))
	pool.For(parallel.NumChunks(n), func(w, c int) {
		if bufs[w] == nil {
			bufs[w] = make([]float32, 3*parallel.Chunk)
		}
		lo, hi := c*parallel.Chunk, min((c+1)*parallel.Chunk, n)
		m := hi - lo
		acc := bufs[w][:m]
		base.Load(acc, lo)
		for i, t := range taus {
			x := t.View(lo, m, bufs[w][parallel.Chunk:])
			l := lam[i]
			for j, v := range x {
				acc[j] += l * v
			}
		}
		out.Store(acc, lo)
	})
	return nil
}
