package merge

import (
	"errors"
	"math"
)

// Multi-SLERP (Goddard's barycentric interpolation on the hypersphere), per
// tensor as mergekit's multislerp computes it. With x_t = θ_t − θ₀ flattened
// (rounded to float32, as mergekit forms it), n_t = ‖x_t‖,
// u_t = x_t / (n_t + ε) and w_t the weights (divided by their sum unless
// normalize_weights is false):
//
//	m = Σ w_t u_t, μ = m / ‖m‖ (the weighted mean direction),
//	g = Σ w_t (u_t − ⟨u_t, μ⟩ μ) (the tangent at μ), r = ‖g‖ + ε,
//	θ = θ₀ + (Σ w_t n_t) · (cos r · μ + sin r / r · g).
//
// Every vector above is a combination of the x_t, so the statistics are the
// task vectors' Gram matrix (float64, one pass per tensor) and each entry is
// θ₀ + Σ c_t x_t, with the c_t computed from the Gram matrix, evaluated in
// float64 and rounded once to float32 (mergekit rounds every step in
// float32). When ‖m‖ < ε the tensor is merged as θ₀ + w_1 x_1 + w_2 x_2
// with two models (mergekit's fallback) and refused with more. One model
// gives θ_1 itself. λ and Normalize are not used; the base is required
// (mergekit's optional base is the origin of the task vectors here).
func init() {
	register(Method{Name: "multislerp", Sparsify: keepAll{}, Combine: multislerp{}})
	param(ParamSpec{Name: "normalize_weights", Kind: KindBool, PerModel: Global, Default: true,
		Doc: "Multi-SLERP: divide the weights by their sum.",
		get: func(p *Params) ([]float64, bool) { return []float64{boolValue(!p.RawWeights)}, false },
		set: func(p *Params, v []float64, _ bool) { p.RawWeights = v[0] == 0 }})
	param(ParamSpec{Name: "eps", Kind: KindFloat, PerModel: Global, Default: 1e-8, Range: &Range{Min: ptr(0), MinOpen: true},
		Doc: "Multi-SLERP: ε added to the norms it divides by; a weighted mean direction shorter than ε counts as zero.",
		get: func(p *Params) ([]float64, bool) { return []float64{p.Eps}, false },
		set: func(p *Params, v []float64, _ bool) { p.Eps = v[0] }})
}

type multislerp struct{}

func (multislerp) normalizes(p Params) bool { return !p.RawWeights }

func (multislerp) prepare(e *engine, units []int) error {
	tis := e.unitTensors(units)
	if e.mix == nil {
		e.mix = make([][]float64, len(e.tensors))
	}
	T := e.T
	if T == 1 {
		return nil // θ_1 as it is
	}
	sums, err := e.taskGrams(tis)
	if err != nil {
		return err
	}
	w := make([]float64, T)
	for i, x := range e.w {
		if !e.p.RawWeights {
			x /= e.wsum // in float32, as mergekit normalizes them
		}
		w[i] = float64(x)
	}
	for i, ti := range tis {
		c, err := multislerpCoefs(sums[i], w, e.p.Eps)
		if err != nil {
			return inputErr("multislerp: tensor %q: %v", e.tensors[ti].Name, err)
		}
		e.mix[ti] = c
	}
	return nil
}

// multislerpCoefs returns the c_t of θ₀ + Σ c_t x_t from the Gram matrix of
// the task vectors (pairIndex order), the weights and ε.
func multislerpCoefs(gram, w []float64, eps float64) ([]float64, error) {
	T := len(w)
	G := func(a, b int) float64 { return gram[pairIndex(T, min(a, b), max(a, b))] }
	quad := func(v []float64) float64 { // vᵀGv, ‖Σ v_t x_t‖²
		var s float64
		for a := range T {
			for b := range T {
				s += v[a] * v[b] * G(a, b)
			}
		}
		return max(s, 0)
	}
	norm := make([]float64, T)
	inv := make([]float64, T) // 1 / (n_t + ε)
	v := make([]float64, T)   // m = Σ v_t x_t
	avg := 0.0
	for t := range T {
		norm[t] = math.Sqrt(G(t, t))
		inv[t] = 1 / (norm[t] + eps)
		v[t] = w[t] * inv[t]
		avg += norm[t] * w[t]
	}
	mn := math.Sqrt(quad(v))
	out := make([]float64, T)
	if mn < eps {
		if T == 2 {
			out[0], out[1] = w[0], w[1]
			return out, nil
		}
		return nil, errors.New("the weighted sum of the unit task vectors is zero (antipodal task vectors whose weights balance out); use other weights")
	}
	mu := make([]float64, T) // μ = Σ mu_t x_t
	for t := range T {
		mu[t] = v[t] / mn
	}
	D := 0.0 // Σ w_t ⟨u_t, μ⟩
	for t := range T {
		var gm float64
		for s := range T {
			gm += G(t, s) * mu[s]
		}
		D += w[t] * inv[t] * gm
	}
	g := make([]float64, T) // tangent g = Σ g_t x_t
	for t := range T {
		g[t] = v[t] - D*mu[t]
	}
	r := math.Sqrt(quad(g)) + eps
	cr, sr := math.Cos(r), math.Sin(r)/r
	for t := range T {
		out[t] = avg * (cr*mu[t] + sr*g[t])
	}
	return out, nil
}

func (multislerp) combine(e *engine, ch chunkRef, base []float32, models, taus [][]float32, out []float32) {
	if e.T == 1 {
		copy(out, models[0][:len(out)])
		return
	}
	c := e.mix[ch.ti]
	for j := range out {
		b := float64(base[j])
		s := b
		for t, x := range taus {
			// x_t is the float32 θ_t − θ₀, as in mergekit; the conversion
			// keeps the product rounded on its own (no fused multiply-add
			// on any platform).
			s += float64(c[t] * float64(x[j]))
		}
		out[j] = float32(s)
	}
}
