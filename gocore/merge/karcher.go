package merge

import (
	"math"
)

// Karcher mean (the Riemannian centre of mass on the unit hypersphere), per
// tensor as mergekit's karcher computes it. Its points are every input,
// the base included (mergekit's group holds the base among its entries),
// equally weighted: with x_k the N = T + 1 tensors flattened (models, then
// the base), n_k = ‖x_k‖ and u_k = x_k / n_k, the entries with n_k > tol
// take part with weights a_k = 1/(their count). The start is the
// normalised Euclidean mean Σ a_k u_k (u of the first such entry if that
// is shorter than tol); each of at most max_iter steps moves the mean μ
// along the tangent g = Σ a_k θ_k / sin θ_k (u_k − cos θ_k μ), θ_k =
// arccos⟨μ, u_k⟩ (terms with θ_k < tol left out), by μ ← cos‖g‖ μ +
// sin‖g‖ g/‖g‖, renormalised, and stops once ‖g‖ < tol. The result is
// (Σ_k n_k / N) · μ; the base is not added back. Every vector is a
// combination of the x_k, so the iteration runs in float64 on their Gram
// matrix (one pass per tensor) and each entry is Σ c_k x_k, evaluated in
// float64 and rounded once to float32. Weights, λ and Normalize are not
// used; the base is required (mergekit without a base_model averages the
// models alone, which npsfuse does not offer).
func init() {
	register(Method{Name: "karcher", Sparsify: keepAll{}, Combine: karcher{}})
	param(ParamSpec{Name: "max_iter", Kind: KindInt, PerModel: Global, Default: 10, Range: &Range{Min: ptr(0)},
		Doc: "Karcher mean: the most tangent steps taken.",
		get: func(p *Params) ([]float64, bool) { return []float64{float64(p.MaxIter)}, false },
		set: func(p *Params, v []float64, _ bool) { p.MaxIter = int(v[0]) }})
	param(ParamSpec{Name: "tol", Kind: KindFloat, PerModel: Global, Default: 1e-5, Range: &Range{Min: ptr(0)},
		Doc: "Karcher mean: norms at most tol leave a tensor out; a tangent step shorter than tol stops the iteration.",
		get: func(p *Params) ([]float64, bool) { return []float64{p.Tol}, false },
		set: func(p *Params, v []float64, _ bool) { p.Tol = v[0] }})
}

type karcher struct{}

func (karcher) normalizes(Params) bool { return false }

func (karcher) prepare(e *engine, units []int) error {
	tis := e.unitTensors(units)
	if e.mix == nil {
		e.mix = make([][]float64, len(e.tensors))
	}
	N := e.T + 1
	sums, err := e.tensorSums(tis, N*(N+1)/2, func(ch chunkRef, ws *workspace, acc []float64) error {
		base, models, _, err := e.loadAll(ch, ws)
		if err != nil {
			return err
		}
		x := func(k int) []float32 {
			if k == e.T {
				return base
			}
			return models[k]
		}
		for a := range N {
			for b := a; b < N; b++ {
				acc[pairIndex(N, a, b)] = dot64(x(a), x(b))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i, ti := range tis {
		e.mix[ti] = karcherCoefs(sums[i], N, e.p.MaxIter, e.p.Tol)
	}
	return nil
}

// karcherCoefs returns the c_k of Σ c_k x_k (models, then the base) from
// the inputs' Gram matrix (pairIndex order over n inputs).
func karcherCoefs(gram []float64, n, maxIter int, tol float64) []float64 {
	norm := make([]float64, n)
	var valid []int
	for k := range n {
		norm[k] = math.Sqrt(gram[pairIndex(n, k, k)])
		if norm[k] > tol {
			valid = append(valid, k)
		}
	}
	out := make([]float64, n)
	if len(valid) == 0 {
		return out // mergekit's zero tensor
	}
	// H is the Gram matrix of the unit vectors u_k; mean = Σ beta_k u_k.
	H := func(a, b int) float64 {
		return gram[pairIndex(n, min(a, b), max(a, b))] / (norm[a] * norm[b])
	}
	quad := func(v []float64) float64 {
		var s float64
		for _, a := range valid {
			for _, b := range valid {
				s += v[a] * v[b] * H(a, b)
			}
		}
		return max(s, 0)
	}
	alpha := 1 / float64(len(valid))
	beta := make([]float64, n)
	for _, k := range valid {
		beta[k] = alpha
	}
	if mn := math.Sqrt(quad(beta)); mn < tol {
		clear(beta)
		beta[valid[0]] = 1
	} else {
		for _, k := range valid {
			beta[k] /= mn
		}
	}
	g := make([]float64, n)
	for range maxIter {
		clear(g)
		for _, k := range valid {
			var dot float64
			for _, l := range valid {
				dot += beta[l] * H(k, l)
			}
			dot = min(max(dot, -1), 1)
			th := math.Acos(dot)
			if th < tol {
				continue
			}
			f := alpha * th / math.Sin(th)
			g[k] += f
			for _, l := range valid {
				g[l] -= f * dot * beta[l]
			}
		}
		tn := math.Sqrt(quad(g))
		if tn < tol {
			break
		}
		c, s := math.Cos(tn), math.Sin(tn)/tn
		for _, k := range valid {
			beta[k] = c*beta[k] + s*g[k]
		}
		if un := math.Sqrt(quad(beta)); un > tol {
			for _, k := range valid {
				beta[k] /= un
			}
		}
	}
	var scale float64
	for k := range n {
		scale += norm[k] / float64(n)
	}
	for _, k := range valid {
		out[k] = scale * beta[k] / norm[k]
	}
	return out
}

func (karcher) combine(e *engine, ch chunkRef, base []float32, models, _ [][]float32, out []float32) {
	c := e.mix[ch.ti]
	cb := c[e.T]
	for j := range out {
		var s float64
		for k, x := range models {
			s += float64(c[k] * float64(x[j])) // rounded product: no fused multiply-add
		}
		out[j] = float32(s + float64(cb*float64(base[j])))
	}
}
