package merge

import (
	"math"
)

// Spherical linear interpolation of two models (Shoemake, "Animating
// Rotation with Quaternion Curves", SIGGRAPH 1985, §3.3), per tensor as
// mergekit computes it: with a = θ_1, b = θ_2 flattened (each divided by
// its norm when that exceeds 1e-8), cos Ω = ⟨a, b⟩/(‖a‖‖b‖); when
// |cos Ω| > 0.9995 the result is the lerp (1−t)·θ_1 + t·θ_2, otherwise
// sin((1−t)Ω)/sin Ω·θ_1 + sin(tΩ)/sin Ω·θ_2. The base is not used, nor are
// weights, λ or Normalize. Exactly two models; t ∈ [0, 1]. The report lists
// Ω per tensor and where the lerp was taken.
func init() {
	register(Method{Name: "slerp", Sparsify: keepAll{}, Combine: slerp{}})
}

type slerp struct{}

// slerpDotThreshold is mergekit's DOT_THRESHOLD.
const slerpDotThreshold = 0.9995

func (slerp) normalizes(Params) bool { return false }

func (slerp) prepare(e *engine, units []int) error {
	tis := e.unitTensors(units)
	sums, err := e.tensorSums(tis, 3, func(ch chunkRef, ws *workspace, acc []float64) error {
		if _, err := e.loadBase(ch, ws); err != nil {
			return err
		}
		a, err := e.loadModel(ch, 0, ws, ws.models[0])
		if err != nil {
			return err
		}
		b, err := e.loadModel(ch, 1, ws, ws.models[1])
		if err != nil {
			return err
		}
		acc[0], acc[1], acc[2] = dot64(a, b), dot64(a, a), dot64(b, b)
		return nil
	})
	if err != nil {
		return err
	}
	if e.coef == nil {
		e.coef = make([][2]float32, len(e.tensors))
	}
	t := e.p.T
	for i, ti := range tis {
		s := sums[i]
		na, nb := math.Sqrt(s[1]), math.Sqrt(s[2])
		if na <= 1e-8 {
			na = 1
		}
		if nb <= 1e-8 {
			nb = 1
		}
		cos := s[0] / (na * nb)
		name := e.tensors[ti].Name
		if math.Abs(cos) > slerpDotThreshold {
			e.coef[ti] = [2]float32{float32(1 - t), float32(t)}
			e.reportTensor("lerp", name, true)
			e.reportTensor("omega", name, math.Acos(math.Max(-1, math.Min(1, cos))))
			continue
		}
		omega := math.Acos(cos)
		so := math.Sin(omega)
		e.coef[ti] = [2]float32{float32(math.Sin(omega-t*omega) / so), float32(math.Sin(t*omega) / so)}
		e.reportTensor("lerp", name, false)
		e.reportTensor("omega", name, omega)
	}
	return nil
}

func (slerp) combine(e *engine, ch chunkRef, _ []float32, models, _ [][]float32, out []float32) {
	c := e.coef[ch.ti]
	a, b := models[0][:len(out)], models[1][:len(out)]
	for j := range out {
		out[j] = c[0]*a[j] + c[1]*b[j]
	}
}
