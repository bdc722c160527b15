package merge

import (
	"math"

	"github.com/npsfuse/npsfuse/gocore/vec"
)

// Model Stock (Jang, Yun & Han, "Model Stock: All we need is just a few
// fine-tuned models", ECCV 2024, eq. 7), as mergekit computes it: per
// tensor, cos φ is the mean over model pairs of the cosine between their
// task vectors (norm products clamped to at least 1e-6, cosines to
// [−1, 1]); t = T·cos φ / ((T−1)·cos φ + 1); the result is
// t·mean(θ_t) + (1−t)·θ₀, with mean(θ_t) = (Σ θ_t)/T in float32. Weights,
// λ and Normalize are not used. Needs T ≥ 2; the statistics take one pass
// over the tensor before it is merged. The report lists t per tensor.
func init() {
	register(Method{Name: "model_stock", Sparsify: keepAll{}, Combine: modelStock{}})
}

type modelStock struct{}

func (modelStock) normalizes(Params) bool { return false }

// pairIndex numbers the pairs a ≤ b of T models row by row.
func pairIndex(T, a, b int) int { return a*T - a*(a-1)/2 + (b - a) }

func (modelStock) prepare(e *engine, units []int) error {
	tis := e.unitTensors(units)
	T := e.T
	sums, err := e.taskGrams(tis)
	if err != nil {
		return err
	}
	if e.coef == nil {
		e.coef = make([][2]float32, len(e.tensors))
	}
	for i, ti := range tis {
		g := sums[i]
		var cs float64
		for a := range T {
			for b := a + 1; b < T; b++ {
				np := math.Sqrt(g[pairIndex(T, a, a)]) * math.Sqrt(g[pairIndex(T, b, b)])
				c := g[pairIndex(T, a, b)] / math.Max(np, 1e-6)
				cs += math.Max(-1, math.Min(1, c))
			}
		}
		cos := cs / float64(T*(T-1)/2)
		den := 1 + float64(T-1)*cos
		if den <= 1e-12 {
			return inputErr("model_stock: the task vectors of tensor %q cancel out (mean cosine %v), t is undefined", e.tensors[ti].Name, cos)
		}
		t := float64(T) * cos / den
		t32 := float32(t)
		e.coef[ti] = [2]float32{t32, 1 - t32}
		e.reportTensor("t", e.tensors[ti].Name, t)
	}
	return nil
}

// direct is combine from the inputs where they are stored, in one vector
// pass (mergeDirect).
func (modelStock) direct(e *engine, ch chunkRef, base []float32, models [][]float32, out []float32) {
	c := e.coef[ch.ti]
	vec.MeanLerp(out, base, models, c[0], c[1])
}

func (modelStock) readsBase() bool { return true }

func (modelStock) combine(e *engine, ch chunkRef, base []float32, models, _ [][]float32, out []float32) {
	c := e.coef[ch.ti]
	t, omt := c[0], c[1]
	clear(out)
	for _, mv := range models {
		for j, x := range mv[:len(out)] {
			out[j] += x
		}
	}
	nT := float32(len(models))
	for j, b := range base[:len(out)] {
		avg := out[j] / nT
		out[j] = t*avg + omt*b
	}
}
