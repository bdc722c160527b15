package merge

import (
	"math"
)

// NuSLERP (mergekit's nuslerp): spherical interpolation between the task
// vectors τ_1 = θ_1 − θ₀ and τ_2 = θ_2 − θ₀ (float32) of exactly two models,
// flattened (nuslerp_flatten, mergekit's default), at t = w_2 / (w_1 + w_2)
// (0.5 when |w_1 + w_2| < 1e-6). With cos Ω = ⟨τ_1, τ_2⟩ / (‖τ_1‖‖τ_2‖)
// (norms clamped to at least 1e-7, the cosine to [−1, 1]), the result is
// θ₀ + sin((1−t)Ω)/sin Ω · τ_1 + sin(tΩ)/sin Ω · τ_2, or the lerp
// θ₀ + (1−t) τ_1 + t τ_2 where 1 − cos²Ω ≤ 1e-16. The statistics are
// float64 sums (one pass per tensor); each entry is evaluated in float64
// and rounded once to float32. λ and Normalize are not used; the base is
// required. Only the flattened form is supported: nuslerp_flatten: false
// (per-row or, with nuslerp_row_wise, per-column interpolation) is refused,
// and nuslerp_row_wise, which mergekit ignores when flattening, is
// accepted and ignored.
func init() {
	register(Method{Name: "nuslerp", Sparsify: keepAll{}, Combine: nuslerp{}})
	param(ParamSpec{Name: "nuslerp_flatten", Kind: KindBool, PerModel: Global, Default: true,
		Doc: "NuSLERP: interpolate each tensor as one flat vector (false, per row or column, is not supported yet).",
		get: func(p *Params) ([]float64, bool) { return []float64{boolValue(!p.NuslerpRows)}, false },
		set: func(p *Params, v []float64, _ bool) { p.NuslerpRows = v[0] == 0 }})
	param(ParamSpec{Name: "nuslerp_row_wise", Kind: KindBool, PerModel: Global, Default: false,
		Doc: "NuSLERP: interpolate columns instead of rows when not flattening; ignored while nuslerp_flatten is true, the only form supported.",
		get: func(*Params) ([]float64, bool) { return nil, false },
		set: func(*Params, []float64, bool) {}})
}

type nuslerp struct{}

func (nuslerp) normalizes(Params) bool { return false }

func (nuslerp) check(e *engine) error {
	if e.p.NuslerpRows {
		return inputErr("nuslerp_flatten: false (per-row or per-column interpolation) is not supported; npsfuse's nuslerp interpolates whole tensors (the default, true)")
	}
	return nil
}

func (nuslerp) prepare(e *engine, units []int) error {
	tis := e.unitTensors(units)
	if e.mix == nil {
		e.mix = make([][]float64, len(e.tensors))
	}
	sums, err := e.tensorSums(tis, 3, func(ch chunkRef, ws *workspace, acc []float64) error {
		_, _, taus, err := e.loadAll(ch, ws)
		if err != nil {
			return err
		}
		acc[0], acc[1], acc[2] = dot64(taus[0], taus[1]), dot64(taus[0], taus[0]), dot64(taus[1], taus[1])
		return nil
	})
	if err != nil {
		return err
	}
	w1, w2 := float64(e.w[0]), float64(e.w[1])
	t := 0.5
	if math.Abs(w1+w2) >= 1e-6 {
		t = w2 / (w1 + w2)
	}
	for i, ti := range tis {
		e.mix[ti] = nuslerpCoefs(sums[i], t)
	}
	return nil
}

// nuslerpCoefs returns the coefficients of τ_1 and τ_2 from ⟨τ_1, τ_2⟩,
// ‖τ_1‖² and ‖τ_2‖².
func nuslerpCoefs(s []float64, t float64) []float64 {
	n1, n2 := max(math.Sqrt(s[1]), 1e-7), max(math.Sqrt(s[2]), 1e-7)
	cos := min(max(s[0]/(n1*n2), -1), 1)
	if 1-cos*cos <= 1e-16 {
		return []float64{1 - t, t}
	}
	th := math.Acos(cos)
	st := math.Sin(th)
	return []float64{math.Sin((1-t)*th) / st, math.Sin(t*th) / st}
}

func (nuslerp) combine(e *engine, ch chunkRef, base []float32, _, taus [][]float32, out []float32) {
	c := e.mix[ch.ti]
	a, b := taus[0][:len(out)], taus[1][:len(out)]
	for j := range out {
		// Each product rounded on its own (no fused multiply-add).
		s := float64(base[j]) + float64(c[0]*float64(a[j])) + float64(c[1]*float64(b[j]))
		out[j] = float32(s)
	}
}
