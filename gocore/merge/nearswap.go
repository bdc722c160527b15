package merge

// NearSwap (alchemonaut's "QuartetAnemoi" recipe, as mergekit's nearswap
// computes it): between the base θ₀ and one fine-tuned model θ₁, each
// entry moves towards θ₁ by w = clamp(t / |θ₀ − θ₁|, 0, 1): entries where
// the two models nearly agree (closer than t) take θ₁'s value, the others
// keep most of the base. Entries equal in both give w = 1. The result is
// w·θ₁ + (1 − w)·θ₀, in float32 with PyTorch's rounding of mergekit's
// expression (t / d is computed as float32(1/d)·float32(t)). Exactly one
// fine-tuned model; t > 0 is required (mergekit has no default).
func init() {
	register(Method{Name: "nearswap", Sparsify: keepAll{}, Combine: nearswap{}})
}

type nearswap struct{}

func (nearswap) normalizes(Params) bool       { return false }
func (nearswap) prepare(*engine, []int) error { return nil }

func (nearswap) combine(e *engine, _ chunkRef, base []float32, models, _ [][]float32, out []float32) {
	t := float32(e.p.T)
	m := models[0]
	for j := range out {
		b, x := base[j], m[j]
		d := b - x
		if d < 0 {
			d = -d
		}
		w := float32(1)
		if d != 0 { // t/0 is +Inf, which mergekit maps to 1
			w = float32(1/d) * t
			w = min(max(w, 0), 1)
		}
		out[j] = float32(w*x) + float32(float32(1-w)*b)
	}
}
