package merge

// RAM (Reinforced Agent Merging, mergekit's ram): per entry, the task
// vectors τ_t = θ_t − θ₀ that count are those with |τ_t| > ε (mergekit's
// epsilon, default 1e-5; one value or one per model). An entry where one
// model counts takes its τ_t whole; where c ≥ 2 do, their mean Σ τ_t / c
// (each τ_t / c rounded, summed in model order, in float32 as mergekit);
// where none does, the base is kept. The result is θ₀ plus that. Weights,
// λ and Normalize are not used.
func init() {
	register(Method{Name: "ram", Sparsify: keepAll{}, Combine: ram{}})
}

type ram struct{}

func (ram) normalizes(Params) bool       { return false }
func (ram) prepare(*engine, []int) error { return nil }

func (ram) combine(e *engine, _ chunkRef, base []float32, _, taus [][]float32, out []float32) {
	eps := make([]float32, len(taus))
	for m := range eps {
		eps[m] = float32(e.p.epsilon(m))
	}
	for j := range out {
		c := 0
		for m, x := range taus {
			if abs32(x[j]) > eps[m] {
				c++
			}
		}
		var s float32
		if c > 0 {
			for m, x := range taus {
				if abs32(x[j]) > eps[m] {
					if c == 1 {
						s += x[j]
					} else {
						s += x[j] / float32(c)
					}
				}
			}
		}
		out[j] = base[j] + s
	}
}
