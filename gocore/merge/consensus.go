package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// Consensus merging with TALL masks (Wang, Dimitriadis et al., "Localizing
// Task Information for Improved Model Merging and Compression", ICML 2024,
// §4 eq. 3 for the TALL mask and §5 eq. 5 for consensus): the multi-task
// vector τ_MTL is task arithmetic's Σ w_t τ_t (`consensus_ta`; divided by
// Σ w_t with Normalize) or TIES' trimmed, elected disjoint mean
// (`consensus_ties`). Each task's TALL mask marks where it dominates,
// m_t = 1[|τ_t| ≥ λ_t·|τ_MTL − τ_t|] on the raw task vectors; coordinates
// active in at least K masks are kept: θ₀ + λ·mask⊙τ_MTL. Defaults
// K = 2, λ_t = 0.4.
func init() {
	register(Method{Name: "consensus_ta", Sparsify: keepAll{}, Combine: consensus{}})
	register(Method{Name: "consensus_ties", Sparsify: topK{}, Combine: consensus{ties: true}})
}

// consensus builds τ_MTL with the task-arithmetic or TIES combiner and
// applies the consensus of the TALL masks.
type consensus struct{ ties bool }

func (c consensus) normalizes(p Params) bool   { return !c.ties && p.Normalize }
func (consensus) prepare(*engine, []int) error { return nil }

func (c consensus) combine(e *engine, _ chunkRef, base []float32, models, taus [][]float32, out []float32) {
	if c.ties {
		vec.DisjointMean(out, taus, e.w, e.p.Normalize)
	} else {
		vec.WeightedSum(out, taus, e.w, 1)
		if e.p.Normalize {
			for j := range out {
				out[j] /= e.wsum
			}
		}
	}
	var buf [16]float32
	lt := buf[:0]
	for m := range e.T {
		lt = append(lt, float32(e.p.tallLambda(m)))
	}
	lam := float32(e.p.Lambda)
	k := e.p.K
	for j, b := range base[:len(out)] {
		mtl := out[j]
		active := 0
		for m, mv := range models {
			raw := mv[j] - b
			if abs32(raw) >= lt[m]*abs32(mtl-raw) {
				active++
			}
		}
		if active >= k {
			out[j] = b + lam*mtl
		} else {
			out[j] = b
		}
	}
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }
